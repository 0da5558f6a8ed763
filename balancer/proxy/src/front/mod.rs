//! Stage `front`: one front end per client protocol. Each reads its protocol into a
//! [`crate::downstream::Request`], refuses what cannot be one, and implements
//! [`crate::downstream::Downstream`] so that the pipeline answers it.

pub mod h1;
pub mod h2;
