//! `floatzip push-dir`: upload every file of a model folder to a floatzip server and
//! record them as one revision of the Hub repo `ORG/NAME` (see `floatzip_server::hub`).
//!
//! Each file goes up with `PUT /v1/models/ORG/NAME/PATH?sha256=…` and the header that
//! defers the revision; then `POST /v1/repos/ORG/NAME/commit` records one revision.
//!
//! Sub-folders are walked: `onnx/model.onnx` goes up under that path. Hidden entries
//! (names starting with `.`: `.git`, `.cache` of `hf download --local-dir`,
//! `.gitattributes`) are skipped at every level. Symbolic links are followed (a Hub cache
//! snapshot is links into its blob store); a walk deeper than the server's path depth
//! limit stops with an error, which also ends any link cycle. Every path is checked
//! against the server's naming rules before anything is sent.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use sha2::{Digest, Sha256};

/// Arguments of `floatzip push-dir`.
#[derive(Args)]
pub struct PushDirArgs {
    /// The local model folder; sub-folders are uploaded too, hidden entries (.git,
    /// .cache, ...) skipped.
    pub dir: PathBuf,
    /// Where to store it: http://HOST:PORT/v1/models/ORG/NAME
    pub url: String,
    /// Bearer token with write access.
    #[arg(long)]
    pub token: String,
    /// No summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `http://HOST:PORT/v1/models/ORG/NAME` taken apart into base, org and name.
fn parse_repo_url(url: &str) -> anyhow::Result<(String, String, String)> {
    let bad = || anyhow::anyhow!("{url:?}: expected http://HOST:PORT/v1/models/ORG/NAME");
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad());
    }
    let (base, rest) = url.split_once("/v1/models/").ok_or_else(bad)?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match parts[..] {
        [org, name] if !org.is_empty() && !name.is_empty() => {
            Ok((base.to_string(), org.to_string(), name.to_string()))
        }
        _ => Err(bad()),
    }
}

/// The files to upload as (path in the repo, local path), sorted by path.
fn list_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    walk(dir, "", 1, &mut out)?;
    out.sort();
    if out.is_empty() {
        bail!("{} holds no files", dir.display());
    }
    for (file, path) in &out {
        floatzip_server::names::check_file_path(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(out)
}

/// Adds the files below `dir` (repo path `prefix`, `depth` segments deep) to `out`.
fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> anyhow::Result<()> {
    use floatzip_server::names::MAX_DEPTH;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            bail!("{}: the name is not UTF-8", e.path().display());
        };
        if name.starts_with('.') {
            continue; // .git, .cache, .gitattributes: not model files
        }
        let path = e.path();
        let repo_path = format!("{prefix}{name}");
        // metadata() follows links: a linked folder is walked, a linked file uploaded.
        let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            if depth >= MAX_DEPTH {
                bail!(
                    "{}: folders nest deeper than the limit of {MAX_DEPTH} path segments",
                    path.display()
                );
            }
            walk(&path, &format!("{repo_path}/"), depth + 1, out)?;
        } else if meta.is_file() {
            out.push((repo_path, path));
        }
    }
    Ok(())
}

fn sha256_file(p: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex::encode(h.finalize()))
}

async fn error_text(r: reqwest::Response) -> String {
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    format!("{status}: {}", body.chars().take(2000).collect::<String>())
}

async fn upload(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    path: &Path,
) -> anyhow::Result<serde_json::Value> {
    let sha = {
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || sha256_file(&p)).await??
    };
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata().await?.len();
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let r = http
        .put(format!("{url}?sha256={sha}"))
        .bearer_auth(token)
        .header(floatzip_server::hub::DEFER_HEADER, "1")
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    if !r.status().is_success() {
        bail!("PUT {url}: {}", error_text(r).await);
    }
    Ok(r.json().await?)
}

/// Runs `floatzip push-dir`.
pub fn run(a: PushDirArgs) -> anyhow::Result<()> {
    let (base, org, name) = parse_repo_url(&a.url)?;
    let files = list_files(&a.dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let revision = rt.block_on(async {
        let http = reqwest::Client::new();
        let (mut sent, mut stored) = (0u64, 0u64);
        for (file, path) in &files {
            let url = format!("{base}/v1/models/{org}/{name}/{file}");
            let s = upload(&http, &url, &a.token, path).await?;
            sent += s["bytes_in"].as_u64().unwrap_or(0);
            stored += s["bytes_stored"].as_u64().unwrap_or(0);
            if !a.quiet {
                eprintln!("{file}: {} bytes", s["bytes_in"]);
            }
        }
        let url = format!("{base}/v1/repos/{org}/{name}/commit");
        let r = http
            .post(&url)
            .bearer_auth(&a.token)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        if !r.status().is_success() {
            bail!("POST {url}: {}", error_text(r).await);
        }
        let v: serde_json::Value = r.json().await?;
        let rev = v["revision"]
            .as_str()
            .context("the commit answer names no revision")?
            .to_string();
        if !a.quiet {
            eprintln!(
                "{org}/{name}: {} files, {:.1} MB sent, {:.1} MB stored, {:.2} s",
                files.len(),
                sent as f64 / 1e6,
                stored as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
        anyhow::Ok(rev)
    })?;
    // The revision id on stdout, for scripts.
    println!("{revision}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_sub_folders_and_skips_hidden_ones() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for f in [
            "config.json",
            "onnx/model.onnx",
            "1_Pooling/config.json",
            "a/b/c.txt",
            ".git/HEAD",
            ".cache/huggingface/x.lock",
            "onnx/.hidden",
            ".gitattributes",
        ] {
            let f = p.join(f);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, b"x").unwrap();
        }
        std::fs::create_dir(p.join("empty")).unwrap();
        let got: Vec<String> = list_files(p).unwrap().into_iter().map(|f| f.0).collect();
        assert_eq!(
            got,
            [
                "1_Pooling/config.json",
                "a/b/c.txt",
                "config.json",
                "onnx/model.onnx"
            ]
        );
        // Names the server would refuse fail before anything is sent.
        std::fs::create_dir_all(p.join("x.json")).unwrap();
        std::fs::write(p.join("x.json/y"), b"x").unwrap();
        assert!(list_files(p).is_err());
    }

    #[test]
    fn repo_urls() {
        assert_eq!(
            parse_repo_url("http://h:1/v1/models/o/n").unwrap(),
            ("http://h:1".into(), "o".into(), "n".into())
        );
        assert!(parse_repo_url("http://h:1/v1/models/o").is_err());
        assert!(parse_repo_url("http://h:1/v1/models/o/n/f").is_err());
        assert!(parse_repo_url("ftp://h/v1/models/o/n").is_err());
    }
}
