//! Writes the generated Grafana dashboards into `dashboards/`.
fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    std::fs::create_dir_all(&dir)?;
    for (file, json) in mailsluice::telemetry::dashboards::all() {
        let text = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)? + "\n";
        std::fs::write(dir.join(file), text)?;
        println!("wrote dashboards/{file}");
    }
    Ok(())
}
