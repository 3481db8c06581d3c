//! The stable runner of the fuzz targets: no nightly flags, no libFuzzer.
//!
//! For each target it replays every input of `corpus/<target>/` (and of
//! `regressions/<target>/`, if any), then feeds it random mutations of those inputs for a
//! while. A panic (a crash or a broken property) is reported with the input, which is saved
//! under `artifacts/<target>/` so that libFuzzer (`cargo fuzz run <target> <file>`) or this
//! runner (`fuzz-replay <target> --input <file>`) replays it. Exits 1 if any target failed.
//!
//! ```text
//! fuzz-replay [--seconds S] [--seed N] [--dir FUZZ_DIR] [--input FILE] [TARGET...]
//! ```
//!
//! Mutations are blind (no coverage feedback): this is a regression check and a smoke test
//! that runs on any toolchain; the coverage-guided search is `scripts/fuzz.sh --long`.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use berth_fuzz::{TARGETS, Target};

/// An input slower than this is a failure (libFuzzer's default `-timeout` is 1200 s; a parser
/// this slow on a small input is a denial of service).
const SLOW: Duration = Duration::from_secs(10);
/// Largest mutated input (libFuzzer's default `-max_len` is 4096 past the corpus' longest).
const MAX_LEN: usize = 64 * 1024;

/// xorshift64*: small, fast, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that mean something to one parser or another.
#[rustfmt::skip]
const TOKENS: &[&[u8]] = &[
    b"\0", b":", b"/", b"//", b"-", b"--", b"_", b"__", b".", b",", b"=", b"&", b"%", b"%2F",
    b"%zz", b"+", b"*", b"**", b"?", b"${user}", b"\"", b"'", b"{", b"}", b"[", b"]", b"[[",
    b"]]", b"\\", b"\\u0000", b"\\ud800", b"\n", b"\r\n", b" ", b"\t", b"#", b"0", b"1", b"9",
    b"18446744073709551615", b"18446744073709551616", b"99999999999999999999999",
    b"-1", b"1e400", b"null", b"true", b"[]", b"{}", b"sha256:", b"sha512:",
    b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", b"bytes=", b"bytes ",
    b"repository:", b"registry:catalog:*", b"pull", b"push", b"delete", b"anonymous", b"Basic ",
    b"Bearer ", b"$2y$", b"::ffff:", b"/v2/", b"blobs", b"uploads", b"manifests", b"tags/list",
    b"referrers", b"\xff", b"\xc3\xa9", b"\xe2\x80\x8b",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = if corpus.is_empty() {
        Vec::new()
    } else {
        corpus[rng.below(corpus.len())].clone()
    };
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                data.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                data.drain(start..end);
            }
            4 if len > 0 => {
                // Repeat a piece (deep nesting, long runs).
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                let piece = data[start..end].to_vec();
                let most = if rng.below(8) == 0 { 512 } else { 4 };
                let times = 1 + rng.below(most);
                let at = rng.below(len + 1);
                for _ in 0..times {
                    data.splice(at..at, piece.iter().copied());
                }
            }
            5 | 6 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                data.splice(at..at, token.iter().copied());
            }
            7 if !corpus.is_empty() => {
                // Splice in a piece of another input.
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let start = rng.below(other.len());
                    let end = (start + 1 + rng.below(64)).min(other.len());
                    let at = rng.below(len + 1);
                    data.splice(at..at, other[start..end].iter().copied());
                }
            }
            8 if len > 0 => {
                data.truncate(rng.below(len));
            }
            _ => {}
        }
    }
    data.truncate(MAX_LEN);
    data
}

fn read_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|data| (p, data)))
        .collect()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// Runs one input; a failure's description if it panicked or was too slow.
fn execute(target: Target, data: &[u8]) -> Result<(), String> {
    let started = Instant::now();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| target(data)));
    match outcome {
        Err(payload) => Err(panic_message(&*payload)),
        Ok(()) if started.elapsed() > SLOW => {
            Err(format!("took {:.1?} (limit {SLOW:?})", started.elapsed()))
        }
        Ok(()) => Ok(()),
    }
}

/// FNV-1a, to name saved inputs by their content.
fn name_of(data: &[u8]) -> String {
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("crash-{hash:016x}")
}

fn save(dir: &Path, target: &str, data: &[u8]) -> PathBuf {
    let dir = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&dir).ok();
    let path = dir.join(name_of(data));
    std::fs::write(&path, data).ok();
    path
}

fn show(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(&data[..data.len().min(300)]);
    format!("{text:?}{}", if data.len() > 300 { " …" } else { "" })
}

struct Options {
    seconds: f64,
    seed: u64,
    dir: PathBuf,
    input: Option<PathBuf>,
    targets: Vec<String>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        seconds: 0.0,
        seed: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        input: None,
        targets: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                options.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--seed" => {
                options.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--dir" => options.dir = PathBuf::from(value("--dir")?),
            "--input" => options.input = Some(PathBuf::from(value("--input")?)),
            "-h" | "--help" => {
                return Err(
                    "usage: fuzz-replay [--seconds S] [--seed N] [--dir FUZZ_DIR] [--input FILE] [TARGET...]"
                        .to_owned(),
                );
            }
            target if TARGETS.iter().any(|(name, _)| *name == target) => {
                options.targets.push(target.to_owned())
            }
            other => {
                let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown target or option {other:?}; targets: {}",
                    names.join(" ")
                ));
            }
        }
    }
    options.seed = options.seed.max(1);
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    // Panics are reported once, with their input, below.
    panic::set_hook(Box::new(|_| {}));

    let selected: Vec<(&str, Target)> = TARGETS
        .iter()
        .copied()
        .filter(|(name, _)| options.targets.is_empty() || options.targets.iter().any(|t| t == name))
        .collect();

    if let Some(file) = &options.input {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut failed = false;
        for (name, target) in &selected {
            if let Err(message) = execute(*target, &data) {
                eprintln!("{name}: {} fails: {message}", file.display());
                failed = true;
            }
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }

    println!(
        "fuzz-replay: {} targets, {}s of mutations each, seed {}",
        selected.len(),
        options.seconds,
        options.seed
    );
    let mut failures = 0usize;
    let mut passed = 0usize;
    for (index, (name, target)) in selected.iter().enumerate() {
        let started = Instant::now();
        let mut inputs = read_dir(&options.dir.join("corpus").join(name));
        inputs.extend(read_dir(&options.dir.join("regressions").join(name)));
        let mut failed = 0usize;
        for (path, data) in &inputs {
            if let Err(message) = execute(*target, data) {
                failed += 1;
                eprintln!(
                    "FAIL {name}: corpus input {} ({} bytes): {message}\n     input: {}",
                    path.display(),
                    data.len(),
                    show(data)
                );
            }
        }
        let corpus: Vec<Vec<u8>> = inputs.into_iter().map(|(_, d)| d).collect();
        let mut rng = Rng(options.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next();
        let budget = Duration::from_secs_f64(options.seconds);
        let mutations_started = Instant::now();
        let mut executions = 0u64;
        while mutations_started.elapsed() < budget && failed < 5 {
            for _ in 0..64 {
                let data = mutate(&mut rng, &corpus);
                executions += 1;
                if let Err(message) = execute(*target, &data) {
                    failed += 1;
                    let saved = save(&options.dir, name, &data);
                    eprintln!(
                        "FAIL {name}: mutated input ({} bytes, saved as {}): {message}\n     input: {}",
                        data.len(),
                        saved.display(),
                        show(&data)
                    );
                    break;
                }
            }
        }
        let elapsed = mutations_started.elapsed().as_secs_f64();
        println!(
            "{name:<16} corpus {:>4}  mutations {:>9} ({:>8.0}/s)  failures {failed}  {:.1}s",
            corpus.len(),
            executions,
            if elapsed > 0.0 {
                executions as f64 / elapsed
            } else {
                0.0
            },
            started.elapsed().as_secs_f64()
        );
        if failed == 0 {
            passed += 1;
        } else {
            failures += 1;
        }
    }
    println!("fuzz: {passed} passed, {failures} failed");
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
