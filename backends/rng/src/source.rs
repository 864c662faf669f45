//! Where the entropy comes from: getrandom(2), or a file or character device.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[path = "vgetrandom.rs"]
mod vgetrandom;

/// An entropy source.
pub enum Source {
    /// getrandom(2) (the kernel's CSPRNG, never blocks once seeded), through the vDSO
    /// where the kernel offers it (no system call per request).
    Getrandom(Option<vgetrandom::Fast>),
    /// A file or device; a regular file is read from the start again at its end.
    File {
        path: PathBuf,
        file: File,
        regular: bool,
    },
}

impl Source {
    /// Parses `--source`: "getrandom" or a path.
    pub fn open(spec: &str) -> io::Result<Self> {
        if spec == "getrandom" {
            let mut probe = [0u8; 1];
            getrandom(&mut probe)?;
            return Ok(Source::Getrandom(vgetrandom::Fast::new()));
        }
        let path = Path::new(spec);
        let file = File::open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            )));
        }
        let regular = meta.is_file();
        if regular && meta.len() == 0 {
            return Err(io::Error::other(format!("{} is empty", path.display())));
        }
        Ok(Source::File {
            path: path.to_path_buf(),
            file,
            regular,
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Getrandom(Some(_)) => "getrandom (vDSO)".into(),
            Source::Getrandom(None) => "getrandom(2)".into(),
            Source::File { path, .. } => path.display().to_string(),
        }
    }

    /// Fills `buf` completely, or fails.
    pub fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Source::Getrandom(Some(f)) => f.fill(buf),
            Source::Getrandom(None) => getrandom(buf),
            Source::File {
                file,
                regular,
                path,
            } => {
                let mut pos = 0;
                let mut rewound = false;
                while pos < buf.len() {
                    match file.read(&mut buf[pos..]) {
                        Ok(0) if *regular && !rewound => {
                            file.seek(SeekFrom::Start(0))?;
                            rewound = true;
                        }
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("{} ended", path.display()),
                            ))
                        }
                        Ok(n) => {
                            pos += n;
                            rewound = false;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }
}

fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut pos = 0;
    while pos < buf.len() {
        // SAFETY: writes at most buf.len() - pos bytes into buf[pos..].
        let r = unsafe { libc::getrandom(buf[pos..].as_mut_ptr().cast(), buf.len() - pos, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        pos += r as usize;
    }
    Ok(())
}
