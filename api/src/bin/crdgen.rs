//! Writes the CRD YAML files under `crds/` from the Rust types (`make crds`).
//! `crdgen -` prints them to stdout instead.

fn main() -> std::io::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("-") {
        print!("{}", strata_api::crds_yaml());
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (file, yaml) in strata_api::crd_files() {
        std::fs::write(root.join(&file), yaml)?;
        eprintln!("wrote {file}");
    }
    Ok(())
}
