//! `mailsluice messages list / show / export`, from the store or through the running node.
//!
//! Exported mail is as private as the store: files are created 0600 and directories the
//! export creates 0700. An export never overwrites a file unless asked to (`--force`) and
//! never writes through a symbolic link, which in a shared directory could have been planted
//! by another user to point at one of ours: with `--force` a link at a file's name is refused
//! rather than replaced, since removing it and creating the file is a second step another
//! user could race.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

use mailsluice::api::SourceView;
use mailsluice::config::Settings;
use mailsluice::store::{MessageMeta, Store};

use super::node_api::NodeApi;
use super::{ExportFormat, MessagesCommand, UsageError, open_store, runtime};

/// Reads the store directly, or through the running node's API.
enum Reader {
    /// Boxed: a store handle is several times the size of the other variant.
    Local(Box<Store>),
    Remote(NodeApi, tokio::runtime::Runtime),
}

impl Reader {
    fn open(settings: &Settings) -> anyhow::Result<Reader> {
        Ok(match open_store(settings)? {
            Some(s) => Reader::Local(Box::new(s)),
            None => Reader::Remote(NodeApi::new(settings)?, runtime()?),
        })
    }

    /// How many messages `source` (or all sources) has stored.
    fn total(&self, source: Option<&str>) -> anyhow::Result<u64> {
        let counts: Vec<(String, u64)> = match self {
            Reader::Local(store) => store.counts()?.into_iter().collect(),
            Reader::Remote(api, rt) => rt
                .block_on(api.get_json::<Vec<SourceView>>("/api/sources"))?
                .into_iter()
                .map(|v| (v.name, v.stored_total))
                .collect(),
        };
        Ok(counts
            .into_iter()
            .filter(|(name, _)| source.is_none_or(|s| s == name))
            .map(|(_, n)| n)
            .sum())
    }

    /// Calls `f` for every message (in storage order) of `source`, or all.
    fn each(
        &self,
        source: Option<&str>,
        limit: usize,
        mut f: impl FnMut(MessageMeta) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        match self {
            Reader::Local(store) => {
                for m in store.iter_meta(source).take(limit) {
                    f(m?)?;
                }
            }
            Reader::Remote(api, rt) => {
                // Ids start at 0: the first page has no `after`.
                let mut after: Option<u64> = None;
                let mut seen = 0usize;
                loop {
                    let mut path = match after {
                        Some(a) => format!("/api/messages?after={a}&limit=1000"),
                        None => "/api/messages?limit=1000".to_string(),
                    };
                    if let Some(s) = source {
                        path.push_str(&format!("&source={s}"));
                    }
                    let page: Vec<MessageMeta> = rt.block_on(api.get_json(&path))?;
                    if page.is_empty() {
                        break;
                    }
                    for m in page {
                        after = Some(m.id);
                        if seen >= limit {
                            return Ok(());
                        }
                        seen += 1;
                        f(m)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn meta(&self, id: u64) -> anyhow::Result<Option<MessageMeta>> {
        match self {
            Reader::Local(store) => Ok(store.meta(id)?),
            Reader::Remote(api, rt) => Ok(rt
                .block_on(api.get_json(&format!("/api/messages/{id}")))
                .ok()),
        }
    }

    fn raw(&self, id: u64) -> anyhow::Result<Vec<u8>> {
        match self {
            Reader::Local(store) => store
                .raw(id)?
                .ok_or_else(|| anyhow!("message {id}: raw bytes missing")),
            Reader::Remote(api, rt) => {
                rt.block_on(api.get_bytes(&format!("/api/messages/{id}/raw")))
            }
        }
    }
}

fn location(m: &MessageMeta) -> String {
    match &m.location {
        mailsluice::store::Location::Imap {
            folder,
            uidvalidity,
            uid,
        } => format!("{folder};UIDVALIDITY={uidvalidity};UID={uid}"),
        mailsluice::store::Location::Pop3 { uidl } => format!("UIDL={uidl}"),
    }
}

pub(crate) fn messages(settings: &Settings, command: MessagesCommand) -> anyhow::Result<()> {
    let reader = Reader::open(settings)?;
    let mut out = std::io::stdout().lock();
    match command {
        MessagesCommand::List { source, limit } => {
            reader.each(source.as_deref(), limit, |m| {
                let subject = m
                    .parsed
                    .as_ref()
                    .and_then(|p| p.subject.clone())
                    .unwrap_or_else(|| {
                        if m.parse_error.is_some() {
                            "(unparsed)".into()
                        } else {
                            String::new()
                        }
                    });
                writeln!(
                    out,
                    "{:>8}  {:<16} {:<40} {:>9}  {}",
                    m.id,
                    m.source,
                    location(&m),
                    m.size,
                    subject
                )?;
                Ok(())
            })?;
        }
        MessagesCommand::Show { id, raw } => {
            let Some(meta) = reader.meta(id)? else {
                return Err(anyhow!("no message {id}"));
            };
            if raw {
                out.write_all(&reader.raw(id)?)?;
            } else {
                writeln!(out, "{}", serde_json::to_string_pretty(&meta)?)?;
            }
        }
        MessagesCommand::Export {
            format,
            out: path,
            source,
            force,
        } => {
            let n = export(&reader, format, &path, source.as_deref(), force)?;
            writeln!(out, "exported {n} message(s) to {}", path.display())?;
        }
    }
    Ok(())
}

fn export(
    reader: &Reader,
    format: ExportFormat,
    path: &Path,
    source: Option<&str>,
    force: bool,
) -> anyhow::Result<u64> {
    let mut n = 0u64;
    // A progress bar on a terminal; the total is what the store counts.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(reader.total(source).unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "exporting [{bar:40}] {pos}/{len} messages, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    match format {
        ExportFormat::Eml => {
            create_private_dir(path).with_context(|| format!("--out {}", path.display()))?;
            reader.each(source, usize::MAX, |m| {
                let raw = reader.raw(m.id)?;
                let file = path.join(format!("{}.eml", m.id));
                create_export_file(&file, force)?
                    .write_all(&raw)
                    .with_context(|| format!("write {}", file.display()))?;
                n += 1;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                Ok(())
            })?;
        }
        ExportFormat::Mbox => {
            let mut f = std::io::BufWriter::new(create_export_file(path, force)?);
            reader.each(source, usize::MAX, |m| {
                let raw = reader.raw(m.id)?;
                write_mboxrd(&mut f, &m, &raw)?;
                n += 1;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                Ok(())
            })?;
            f.flush()?;
        }
        ExportFormat::Jsonl => {
            let mut f = std::io::BufWriter::new(create_export_file(path, force)?);
            reader.each(source, usize::MAX, |m| {
                serde_json::to_writer(&mut f, &m)?;
                f.write_all(b"\n")?;
                n += 1;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                Ok(())
            })?;
            f.flush()?;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(n)
}

/// Why an export file was not created. All but `Io` are refusals: exit 2, naming the file.
#[derive(Debug, thiserror::Error)]
enum ExportFileError {
    #[error("{} exists; not overwritten (pass --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error(
        "{} is a symbolic link; an export never writes through one, not even with --force: remove it or export elsewhere",
        .0.display()
    )]
    Symlink(PathBuf),
    #[error("{} is not a regular file; not replaced", .0.display())]
    NotAFile(PathBuf),
    #[error("{} has other hard links; not replaced, which would change the other names too", .0.display())]
    HardLinked(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates `dir` and any missing parents 0700 (the umask can only narrow that). A directory
/// that exists is used as it is: it was there before the export.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// [`open_export_file`], its refusals usage errors (exit 2).
fn create_export_file(path: &Path, force: bool) -> anyhow::Result<File> {
    open_export_file(path, force).map_err(|e| match e {
        ExportFileError::Io { .. } => anyhow::Error::new(e),
        refusal => UsageError(refusal.to_string()).into(),
    })
}

/// Opens `path` to write one export file into, created 0600. Without `force` the file must
/// not exist (`O_EXCL`, which also refuses a symbolic link, dangling or not). With `force` an
/// existing regular file is emptied and made 0600, opened with `O_NOFOLLOW` so a link at its
/// name fails instead of being followed, and `O_NONBLOCK` so a FIFO planted there cannot
/// hang the export; anything but a regular file with a single name is refused.
fn open_export_file(path: &Path, force: bool) -> Result<File, ExportFileError> {
    let io = |source| ExportFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
        options.custom_flags(libc::O_NOFOLLOW | if force { libc::O_NONBLOCK } else { 0 });
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(if link {
                ExportFileError::Symlink(path.to_path_buf())
            } else {
                ExportFileError::Exists(path.to_path_buf())
            });
        }
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ExportFileError::Symlink(path.to_path_buf()));
        }
        // A directory (EISDIR), or a FIFO or socket no one reads (ENXIO).
        #[cfg(unix)]
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR | libc::ENXIO)) => {
            return Err(ExportFileError::NotAFile(path.to_path_buf()));
        }
        Err(e) => return Err(io(e)),
    };
    if force {
        let meta = file.metadata().map_err(io)?;
        if !meta.file_type().is_file() {
            return Err(ExportFileError::NotAFile(path.to_path_buf()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            if meta.nlink() > 1 {
                return Err(ExportFileError::HardLinked(path.to_path_buf()));
            }
            // A file replaced keeps its old mode otherwise.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        file.set_len(0).map_err(io)?;
    }
    Ok(file)
}

/// mboxrd: a `From ` separator line, then the message with every line matching
/// `>*From ` quoted with one more `>`, then a blank line.
fn write_mboxrd(w: &mut impl Write, m: &MessageMeta, raw: &[u8]) -> std::io::Result<()> {
    let date = m
        .internal_date
        .as_deref()
        .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.format("%a %b %e %H:%M:%S %Y").to_string())
        .unwrap_or_else(|| "Thu Jan  1 00:00:00 1970".into());
    writeln!(w, "From mailsluice@localhost {date}")?;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let stripped = line
            .iter()
            .skip_while(|&&b| b == b'>')
            .copied()
            .collect::<Vec<u8>>();
        if stripped.starts_with(b"From ") {
            w.write_all(b">")?;
        }
        w.write_all(line)?;
    }
    if !raw.ends_with(b"\n") {
        w.write_all(b"\n")?;
    }
    w.write_all(b"\n")
}
