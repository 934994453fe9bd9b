//! Writing output files safely: to a temporary name beside the target, renamed at the end,
//! so a failure or an interrupt never leaves a partial file under the final name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tempfile::NamedTempFile;

/// An output file being written; becomes visible under its name only on [`AtomicFile::commit`].
pub struct AtomicFile {
    target: PathBuf,
    force: bool,
    tmp: BufWriter<NamedTempFile>,
}

impl AtomicFile {
    /// Prepares to write `target`; fails now if it exists and `force` is off.
    pub fn create(target: &Path, force: bool) -> anyhow::Result<Self> {
        if !force && target.exists() {
            bail!("{} exists (use --force to overwrite)", target.display());
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            force,
            tmp: BufWriter::with_capacity(1 << 20, tmp),
        })
    }

    /// Flushes and renames into place.
    pub fn commit(self) -> anyhow::Result<()> {
        let tmp = self.tmp.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        let res = if self.force {
            tmp.persist(&self.target)
        } else {
            tmp.persist_noclobber(&self.target)
        };
        res.map_err(|e| e.error)
            .with_context(|| format!("cannot write {}", self.target.display()))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

/// Opens an input file with its name in the error.
pub fn open_input(path: &Path) -> anyhow::Result<(File, u64)> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    Ok((f, len))
}

/// A whole-file transformation (compress or decompress): reads `input` with progress,
/// runs `work` on the thread pool into an atomic `target`, and commits it only if `work`
/// succeeded. Returns what `work` returned and the seconds it took.
pub fn transform_file<T: Send>(
    input: &Path,
    target: &Path,
    out: &crate::OutputArgs,
    threads: crate::ThreadArgs,
    label: &'static str,
    quiet: bool,
    work: impl FnOnce(&mut dyn std::io::Read, AtomicFile) -> floatzip_codec::Result<(AtomicFile, T)>
        + Send,
) -> anyhow::Result<(T, f64)> {
    let (file, len) = open_input(input)?;
    let sink = AtomicFile::create(target, out.force)?;
    let started = std::time::Instant::now();
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut reader = crate::progress::Progress::new(reader, label, len, quiet);
    let result = threads.run(|| {
        let r = work(&mut reader, sink);
        reader.finish();
        r
    })?;
    let (sink, value) = result.with_context(|| format!("{}", input.display()))?;
    sink.commit()?;
    Ok((value, started.elapsed().as_secs_f64()))
}
