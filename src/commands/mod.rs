pub mod info;
pub mod tag;
pub mod version;
