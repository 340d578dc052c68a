//! Shared by the firmware examples: the board glue (the only board-specific
//! part) and a SysTick time driver.
#![no_std]

pub mod board;

#[path = "../../qemu-test/src/systick_driver.rs"]
pub mod systick_driver;

/// Logs with defmt when the `defmt` feature is on; compiles to nothing
/// otherwise.
#[macro_export]
macro_rules! log {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::info!($s $(, $x)*);
        #[cfg(not(feature = "defmt"))]
        let _ = ($( & $x ),*);
    }};
}
