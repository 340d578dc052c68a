//! tinyproto over embassy-net (work in progress).
#![no_std]
