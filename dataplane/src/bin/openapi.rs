//! Writes `docs/openapi.json` and `docs/problems.md` from the code
//! (`make openapi`); tests in `strata_dataplane::openapi` fail when the
//! committed files differ from what this writes.

use std::path::Path;

use strata_dataplane::openapi;

fn main() -> std::io::Result<()> {
    // The workspace root, wherever cargo was run from.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (relative, text) in [
        (openapi::OPENAPI_PATH, openapi::document_json()),
        (openapi::PROBLEMS_PATH, openapi::problems_markdown()),
    ] {
        let path = root.join(relative);
        std::fs::write(&path, text)?;
        println!("wrote {relative}");
    }
    Ok(())
}
