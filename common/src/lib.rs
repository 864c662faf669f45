//! What every splitvm back end shares: daemon lifecycle, CLI conventions, logging.
