//! Teardown paths (filled in below).
