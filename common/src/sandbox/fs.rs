//! Landlock: after set-up a daemon needs no file-system access at all, except
//! removing its own socket file at exit (remove-file in the socket's directory).

use super::Error;
use landlock::{
    Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use std::path::Path;

/// The Landlock ABI whose rights we ask for (the newest this code was tested
/// with); older kernels enforce what they know (best effort).
const TARGET_ABI: ABI = ABI::V7;

/// What Landlock enforced.
pub struct FsStatus {
    /// Opening files is restricted (some Landlock support).
    pub fully_enforced: bool,
    pub describe: String,
}

/// Restricts the calling thread (and the threads it starts afterwards): every
/// file-system access right is handled and none granted, but remove-file in
/// the directory of `socket_path`; TCP bind/connect denied; abstract unix
/// sockets and signals scoped to this process.
pub fn restrict(socket_path: Option<&Path>) -> Result<FsStatus, Error> {
    let mut created = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .and_then(|r| r.handle_access(AccessNet::from_all(TARGET_ABI)))
        .and_then(|r| r.scope(Scope::from_all(TARGET_ABI)))
        .and_then(|r| r.create())
        .map_err(Error::Landlock)?;
    let mut granted = String::from("no file-system access");
    if let Some(dir) = socket_path.and_then(Path::parent) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // A directory we cannot open (gone, or permissions) just loses the
        // clean-up of the socket file.
        match PathFd::new(dir) {
            Ok(fd) => {
                created = created
                    .add_rule(PathBeneath::new(fd, AccessFs::RemoveFile))
                    .map_err(Error::Landlock)?;
                granted = format!("only remove-file in {}", dir.display());
            }
            Err(e) => log::warn!("sandbox: socket directory {}: {e}", dir.display()),
        }
    }
    let status = created.restrict_self().map_err(Error::Landlock)?;
    let (fully_enforced, state) = match status.ruleset {
        RulesetStatus::FullyEnforced => (true, "fully enforced"),
        RulesetStatus::PartiallyEnforced => (true, "partially enforced (older kernel)"),
        RulesetStatus::NotEnforced => (false, "not supported by this kernel"),
    };
    Ok(FsStatus {
        fully_enforced,
        describe: format!("{state}: {granted}"),
    })
}
