//! Small test utilities: temporary directories, image files, patterns, polling.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A directory removed (with its contents) on drop.
pub struct TempDir {
    path: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    /// Create `$TMPDIR/splitvm-<tag>-<pid>-<n>-<nanos>`. Kept short: Unix socket paths are
    /// limited to 107 bytes.
    pub fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "splitvm-{tag}-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("creating temp dir");
        TempDir { path }
    }
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SPLITVM_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A deterministic byte pattern: byte `i` of the stream seeded by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Create an image file of `size` bytes filled with `pattern(seed, size)`.
pub fn make_image(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let data = pattern(seed, size);
    std::fs::write(path, &data).expect("writing image");
    data
}

/// Read `len` bytes of a file at `offset`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(path).expect("opening image");
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).expect("reading image");
    b
}

/// Write bytes into a file at `offset`.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("opening image");
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
}

/// Poll `f` every 10 ms until it returns true or `timeout` passes; returns the last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Compare two byte slices and describe the first difference (for assertion messages).
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("lengths differ: {} vs {}", a.len(), b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y).map(|i| {
        format!(
            "first difference at byte {i}: {:#04x} vs {:#04x}",
            a[i], b[i]
        )
    })
}

/// Assert two byte slices are equal without printing megabytes.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if let Some(d) = first_diff(got, want) {
        panic!("{what}: {d}");
    }
}
