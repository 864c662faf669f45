//! A vhost-user-blk back end served in-process, for the targets that talk
//! vhost-user: splitvm-common's `Handler` around a real `BlkBackend` on a
//! memfd image, with its queue workers, kept for the whole fuzz run (the
//! daemon, too, keeps one handler across front ends).
//!
//! [`serve_connection`] runs the daemon's own per-connection loop
//! (`splitvm_common::daemon::serve_connection`), without the accept, signals
//! and socket files of `serve_with`, which a harness does not want.

use crate::blk::MemImage;
use splitvm_common::handler::Handler;
use splitvm_common::worker::Worker;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use vhost_user_blk::backend::BlkBackend;

pub type BlkHandler = Arc<Mutex<Handler<BlkBackend>>>;

pub struct BlkServer {
    pub handler: BlkHandler,
    _workers: Vec<Worker>,
    _image: MemImage,
}

/// The process-wide blk back end (image of 1 MiB, 2 queues of up to 256).
pub fn blk_server() -> &'static BlkServer {
    static S: OnceLock<BlkServer> = OnceLock::new();
    S.get_or_init(|| {
        let image = MemImage::new(1 << 20);
        let backend = image.backend(false, 256);
        let (handler, workers) = Handler::new(backend).expect("handler");
        BlkServer {
            handler: Arc::new(Mutex::new(handler)),
            _workers: workers,
            _image: image,
        }
    })
}

/// Handles one front end's requests until it goes away or sends something
/// the protocol cannot recover from: the daemon's own per-connection loop.
pub fn serve_connection(handler: &BlkHandler, stream: UnixStream) {
    if let Err(e) = splitvm_common::daemon::serve_connection(handler, stream) {
        if crate::debug() {
            eprintln!("front end dropped: {e}");
        }
    }
}
