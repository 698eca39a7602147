//! (merged from the remote branch)
