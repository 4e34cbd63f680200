//! Live request stream for `meshd tap`.
//! (Placeholder: the streaming endpoint lands next.)

use std::sync::Arc;

use super::RequestEvent;

#[derive(Default)]
pub struct Tap {}

impl Tap {
    pub fn publish(&self, _ev: Arc<RequestEvent>) {}
}
