//! Writes the generated Grafana dashboards and Prometheus alerting rules into `dashboards/`.
fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    std::fs::create_dir_all(&dir)?;
    for (file, text) in mailsluice::telemetry::dashboards::files() {
        std::fs::write(dir.join(file), text)?;
        println!("wrote dashboards/{file}");
    }
    Ok(())
}
