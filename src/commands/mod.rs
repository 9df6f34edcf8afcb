pub mod info;
pub mod tag;
