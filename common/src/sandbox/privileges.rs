//! Privileges: a daemon started as root either switches to `--user`/`--group`
//! or keeps uid 0 without any capability; no-new-privileges is set in all cases.

use super::Error;
use nix::unistd::{Gid, Group, Uid, User};

/// Drops privileges; returns a description for the log.
pub fn drop_privileges(user: Option<&str>, group: Option<&str>) -> Result<String, Error> {
    set_no_new_privs()?;
    let root = Uid::effective().is_root();
    let target = resolve(user, group)?;
    let who = match (root, target) {
        (false, None) => "unprivileged, no-new-privileges".to_string(),
        (false, Some((uid, gid))) => {
            if uid != Uid::effective() || gid != Gid::effective() {
                return Err(Error::Privileges(
                    "--user/--group need the daemon to start as root".into(),
                ));
            }
            format!("running as uid {uid} gid {gid}, no-new-privileges")
        }
        (true, Some((uid, gid))) => {
            drop_bounding_set()?;
            nix::unistd::setgroups(&[])
                .map_err(|e| Error::Privileges(format!("setgroups: {e}")))?;
            nix::unistd::setresgid(gid, gid, gid)
                .map_err(|e| Error::Privileges(format!("setresgid({gid}): {e}")))?;
            nix::unistd::setresuid(uid, uid, uid)
                .map_err(|e| Error::Privileges(format!("setresuid({uid}): {e}")))?;
            clear_capabilities()?;
            format!("switched to uid {uid} gid {gid}, no capabilities, no-new-privileges")
        }
        (true, None) => {
            drop_bounding_set()?;
            clear_capabilities()?;
            "uid 0 without capabilities, no-new-privileges".to_string()
        }
    };
    Ok(who)
}

fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<(Uid, Gid)>, Error> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let (uid, user_gid) = match user {
        None => (Uid::effective(), None),
        Some(u) => match u.parse::<u32>() {
            Ok(n) => (Uid::from_raw(n), None),
            Err(_) => {
                let entry = User::from_name(u)
                    .map_err(|e| Error::Privileges(format!("user {u:?}: {e}")))?
                    .ok_or_else(|| Error::Privileges(format!("no user {u:?}")))?;
                (entry.uid, Some(entry.gid))
            }
        },
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(g)
                    .map_err(|e| Error::Privileges(format!("group {g:?}: {e}")))?
                    .ok_or_else(|| Error::Privileges(format!("no group {g:?}")))?
                    .gid
            }
        },
        // A named user's primary group; a numeric uid keeps the current group
        // unless --group says otherwise.
        None => user_gid.unwrap_or_else(Gid::effective),
    };
    Ok(Some((uid, gid)))
}

fn set_no_new_privs() -> Result<(), Error> {
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::Privileges(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Empties the bounding and ambient sets (needs CAP_SETPCAP, so before the
/// permitted set goes).
fn drop_bounding_set() -> Result<(), Error> {
    // SAFETY: plain prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    for cap in 0..64 {
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(Error::Privileges(format!("PR_CAPBSET_DROP({cap}): {e}")));
        }
    }
    Ok(())
}

/// Empties the effective, permitted and inheritable sets (capset(2)).
fn clear_capabilities() -> Result<(), Error> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data::default(); 2];
    // SAFETY: header and data are valid for the call, in the layout capset(2) expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(Error::Privileges(format!(
            "capset: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
