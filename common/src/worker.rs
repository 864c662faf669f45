//! Queue worker threads: each waits on the kick eventfds of its queues (and
//! any fds its back end adds, such as a tap) and calls the back end's
//! `handle_event`. Workers live as long as the daemon, across front ends.
//!
//! Event data: `0..n` are the worker's own vrings (n = its queue count);
//! back ends add their own fds with data above `num_queues()` (as with
//! vhost-user-backend's `VringEpollHandler`); `EXIT` stops the thread.

use crate::vring::Vring;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use vhost_user_backend::VhostUserBackend;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const EXIT: u64 = u64::MAX;

/// What a back end (or the handler) uses to add and remove fds of a worker.
#[derive(Clone)]
pub struct WorkerHandle {
    epoll: Arc<Epoll>,
    first_custom: u64,
}

impl WorkerHandle {
    /// Watches `fd` for `events`; `handle_event` gets `data` as device_event.
    /// `data` must be above the back end's queue count.
    pub fn register_listener(&self, fd: RawFd, events: EventSet, data: u64) -> io::Result<()> {
        if data < self.first_custom || data == EXIT {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, data))
    }

    /// Stops watching `fd`.
    pub fn unregister_listener(&self, fd: RawFd, events: EventSet, data: u64) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::new(events, data))
    }

    /// Changes the events watched on a registered `fd` (e.g. pause a tap).
    pub fn modify_listener(&self, fd: RawFd, events: EventSet, data: u64) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, data))
    }

    pub(crate) fn add_kick(&self, fd: RawFd, local_index: usize) -> io::Result<()> {
        match self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, local_index as u64),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    pub(crate) fn remove_kick(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

/// One worker thread.
pub struct Worker {
    handle: WorkerHandle,
    exit: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts worker `thread_id` serving `vrings` (the queues it owns).
    pub fn spawn<B>(backend: B, vrings: Vec<Vring>, thread_id: usize) -> io::Result<Self>
    where
        B: VhostUserBackend<Bitmap = (), Vring = Vring> + 'static,
    {
        let epoll = Arc::new(Epoll::new()?);
        let exit = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            exit.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EXIT),
        )?;
        let handle = WorkerHandle {
            epoll: epoll.clone(),
            first_custom: backend.num_queues() as u64 + 1,
        };
        let thread = std::thread::Builder::new()
            .name(format!("queue-worker-{thread_id}"))
            .spawn(move || run(&backend, &epoll, &vrings, thread_id))?;
        Ok(Worker {
            handle,
            exit,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &WorkerHandle {
        &self.handle
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.exit.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run<B>(backend: &B, epoll: &Epoll, vrings: &[Vring], thread_id: usize)
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring>,
{
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("worker {thread_id}: epoll_wait failed, stopping: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let data = ev.data();
            if data == EXIT {
                return;
            }
            let evset = ev.event_set();
            if let Some(vring) = vrings.get(data as usize) {
                // Drain the kick; a ring that is stopped or disabled is left alone.
                let _ = vhost_user_backend::VringT::read_kick(vring);
                if !vring.is_running() {
                    continue;
                }
                let _busy = vring.busy();
                if let Err(e) = backend.handle_event(data as u16, EventSet::IN, vrings, thread_id) {
                    log::warn!("worker {thread_id}: queue event {data}: {e}");
                }
            } else if let Err(e) = backend.handle_event(data as u16, evset, vrings, thread_id) {
                log::warn!("worker {thread_id}: event {data}: {e}");
            }
        }
    }
}
