//! `portald demo`: a self-contained run in private network namespaces.

use crate::args::DemoArgs;
use anyhow::{bail, Result};

pub fn run(_args: DemoArgs) -> Result<u8> {
    bail!("the demo is not built yet")
}
