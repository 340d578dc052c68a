//! Threaded tinyproto server and client for std (work in progress).
