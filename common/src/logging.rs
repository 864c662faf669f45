//! Logging set-up: `--log-level` wins over RUST_LOG, which wins over "info".

use crate::error::{Error, Result};
use log::LevelFilter;

/// Starts env_logger for the daemon `name`.
pub fn init(name: &'static str, level: Option<&str>) -> Result<()> {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(LevelFilter::Info);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if let Some(level) = level {
        let filter: LevelFilter = level
            .parse()
            .map_err(|_| Error::LogLevel(level.to_string()))?;
        builder.filter_level(filter);
    }
    builder.format(move |buf, record| {
        use std::io::Write;
        writeln!(
            buf,
            "{name}[{}]: {}: {}",
            std::process::id(),
            record.level().as_str().to_ascii_lowercase(),
            record.args()
        )
    });
    // A second init (tests) is harmless.
    let _ = builder.try_init();
    Ok(())
}
