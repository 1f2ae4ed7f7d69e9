//! Property tests of the schedule functions.
