pub mod info;
pub mod lease;
pub mod tag;
pub mod version;
