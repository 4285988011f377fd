//! Graph passes (work in progress).
