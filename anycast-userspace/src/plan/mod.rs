//! Pure planning: Maglev tables, and the host's model of the program's decision. No I/O; the
//! dataplane layer publishes what is planned here.

pub mod maglev;
pub mod model;
