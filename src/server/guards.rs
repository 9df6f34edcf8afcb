//! Guards that tell the notification handler and the call layer where
//! they are called from: inside a keyspace notification, or while the
//! module applies a plan of its own.

use std::cell::Cell;

thread_local! {
    static APPLYING: Cell<u32> = const { Cell::new(0) };
    static IN_NOTIFICATION: Cell<u32> = const { Cell::new(0) };
}

/// A nesting depth kept while a guard lives (commands and notifications
/// nest: a command's write fires a notification that runs a command).
pub struct Depth(&'static std::thread::LocalKey<Cell<u32>>);

impl Depth {
    fn enter(depth: &'static std::thread::LocalKey<Cell<u32>>) -> Depth {
        depth.with(|c| c.set(c.get() + 1));
        Depth(depth)
    }

    fn inside(depth: &'static std::thread::LocalKey<Cell<u32>>) -> bool {
        depth.with(|c| c.get() > 0)
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        self.0.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// While its guard lives, calls are made from inside a keyspace notification.
pub struct InNotification;

impl InNotification {
    pub fn begin() -> Depth {
        Depth::enter(&IN_NOTIFICATION)
    }

    pub fn active() -> bool {
        Depth::inside(&IN_NOTIFICATION)
    }
}

/// While its guard lives, the module is applying a plan: it mirrors its own
/// writes into the index itself, and the notification handler leaves their
/// events alone.
pub struct Applying;

impl Applying {
    pub fn begin() -> Depth {
        Depth::enter(&APPLYING)
    }

    pub fn active() -> bool {
        Depth::inside(&APPLYING)
    }
}
