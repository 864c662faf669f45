//! Host-side vhost-user driver that plays the guest in cross-process tests.
