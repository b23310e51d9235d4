//! The integration tests, one module per area, linked into one test binary (one link and one
//! executable instead of one per file keeps the workspace's test build small).

mod retries;
mod sdk;
