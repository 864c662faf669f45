//! Bounds how long one exchange with a back end may block: when the
//! deadline passes, the socket is shut down, so the blocked receive returns
//! (the vhost crate retries timeouts internally, so SO_RCVTIMEO would not).

use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    armed: Option<(RawFd, Instant, u64)>,
    generation: u64,
    fired: bool,
    quit: bool,
}

/// One watchdog per connection.
pub struct Watchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl Watchdog {
    pub fn new() -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let s = shared.clone();
        std::thread::Builder::new()
            .name("vhost-watchdog".into())
            .spawn(move || run(&s))?;
        Ok(Self { shared })
    }

    /// Runs `f`; if it takes longer than `timeout`, shuts `fd` down.
    /// Returns `f`'s result and whether the watchdog fired.
    pub fn guard<T>(&self, fd: RawFd, timeout: Duration, f: impl FnOnce() -> T) -> (T, bool) {
        let (lock, cv) = &*self.shared;
        {
            let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
            st.generation += 1;
            st.armed = Some((fd, Instant::now() + timeout, st.generation));
            st.fired = false;
            cv.notify_all();
        }
        let r = f();
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        st.armed = None;
        let fired = st.fired;
        cv.notify_all();
        (r, fired)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).quit = true;
        cv.notify_all();
    }
}

fn run(shared: &(Mutex<State>, Condvar)) {
    let (lock, cv) = shared;
    let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if st.quit {
            return;
        }
        match st.armed {
            None => st = cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            Some((fd, deadline, gen)) => {
                let now = Instant::now();
                if now >= deadline {
                    if st.generation == gen {
                        // SAFETY: shutdown on the connection's fd, which stays
                        // open while armed (the guarded call is using it).
                        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                        st.fired = true;
                    }
                    st.armed = None;
                } else {
                    st = cv
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fires_on_a_blocked_read() {
        let (mut a, _b) = UnixStream::pair().unwrap();
        let w = Watchdog::new().unwrap();
        let fd = a.as_raw_fd();
        let start = Instant::now();
        let (r, fired) = w.guard(fd, Duration::from_millis(100), || a.read(&mut [0u8; 4]));
        assert!(fired);
        assert_eq!(r.unwrap(), 0, "shut-down socket reads EOF");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn quiet_when_the_call_is_quick() {
        let (a, _b) = UnixStream::pair().unwrap();
        let w = Watchdog::new().unwrap();
        let (v, fired) = w.guard(a.as_raw_fd(), Duration::from_millis(50), || 7);
        assert_eq!((v, fired), (7, false));
        std::thread::sleep(Duration::from_millis(100));
        // The socket is still usable.
        assert!(a.peer_addr().is_ok());
    }
}
