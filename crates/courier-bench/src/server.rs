//! The system under test, as the benchmarks set it up: `courier` processes started beside
//! this binary and stopped with SIGTERM, and the dedicated database and key prefix they run
//! on (a benchmark empties and fills them, so it refuses any other).

use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use sqlx::PgPool;

use courier::config::Config;
use courier::valkey::Valkey;

/// The `courier` executable: `COURIER_BIN`, or the one built beside this benchmark.
fn courier_exe() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("COURIER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let here = std::env::current_exe().context("cannot find this executable")?;
    let exe = here.with_file_name("courier");
    anyhow::ensure!(
        exe.exists(),
        "no courier executable beside {} (build it with `cargo build --release -p courier`, \
         or set COURIER_BIN)",
        here.display()
    );
    Ok(exe)
}

/// A `courier` process under test (`serve` or `worker`), stopped with SIGTERM when done
/// (killed if dropped).
#[derive(Debug)]
pub(crate) struct Courier(std::process::Child);

/// The environment of a server whose rate limits are off: the simulated parties of the
/// end-to-end and SSE benchmarks act for thousands of people through a few principals, far
/// faster than any one person. The limiter's own cost is measured by the location benchmark.
pub(crate) fn unlimited() -> (&'static str, String) {
    ("COURIER_RATE_LIMITS_ENABLED", "false".to_owned())
}

impl Courier {
    /// Starts `courier <command>` on `config`'s database, Valkey and key prefix, listening on
    /// `listen` if given, with `env` added to its environment; its log goes to `log` if given.
    pub(crate) fn start(
        config: &Config,
        command: &str,
        listen: Option<SocketAddr>,
        env: &[(&str, String)],
        log: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut process = std::process::Command::new(courier_exe()?);
        process
            .args([
                "--database-url",
                config.database.url.expose_secret(),
                "--valkey-url",
                config.valkey.url.expose_secret(),
            ])
            .args(["--key-prefix", &config.valkey.key_prefix]);
        if config.dev {
            process.arg("--dev");
        }
        process.arg(command);
        if let Some(listen) = listen {
            process.args(["--listen", &listen.to_string()]);
        }
        for (name, value) in env {
            process.env(name, value);
        }
        if let Some(log) = log {
            let file = std::fs::File::create(log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            process.stderr(file);
        }
        let child = process
            .env("LOG_LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start courier {command}"))?;
        Ok(Self(child))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, then wait: the process drains (and the server flushes its history).
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "could not signal courier");
        let exit = self.0.wait()?;
        anyhow::ensure!(exit.success(), "courier exited with {exit}");
        Ok(())
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the server at `base` answers `/readyz`.
pub(crate) async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("the server at {base} did not become ready")
}

/// Deletes every location key under this process's prefix.
pub(crate) async fn clear_location_keys(valkey: &Valkey) -> anyhow::Result<()> {
    let mut conn = valkey.connection();
    let pattern = valkey.key("loc:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Valkey's process id (`INFO server`), for the CPU report; `None` if it does not say.
pub(crate) async fn valkey_pid(conn: &mut courier::valkey::Connection) -> Option<u32> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .ok()?;
    parse_process_id(&info)
}

fn parse_process_id(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The id of an operator account (tokens must name one that exists), created if there is none.
pub(crate) async fn ensure_operator(db: &PgPool) -> anyhow::Result<i64> {
    let existing: Option<i64> =
        sqlx::query_scalar("SELECT min(id) FROM users WHERE role = 'operator'")
            .fetch_one(db)
            .await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO users (role, name, email)
         VALUES ('operator', 'Bench operator', 'bench-operator@bench.courier.invalid') RETURNING id",
    )
    .fetch_one(db)
    .await?)
}

/// The benchmark adds drivers, empties the location history and deletes location keys:
/// it refuses to run unless its database is a dedicated one (its name contains `bench`) and
/// its keys live under a prefix of their own.
pub(crate) fn ensure_dedicated(database_url: &str, key_prefix: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(database_url).context("the database URL is not a URL")?;
    let database = url.path().trim_start_matches('/');
    anyhow::ensure!(
        database.contains("bench"),
        "the benchmark empties the location history of its database; give it a dedicated one \
         whose name contains \"bench\" (database \"{database}\" refused)"
    );
    anyhow::ensure!(
        !key_prefix.is_empty(),
        "the benchmark deletes the location keys under its key prefix; set one (e.g. \
         COURIER_KEY_PREFIX=bench:)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dedicated_database_and_prefix_are_benchmarked() {
        assert!(ensure_dedicated("postgres://h/courier_bench", "bench:").is_ok());
        let refused =
            ensure_dedicated("postgres://h/courier", "bench:").expect_err("not a bench database");
        assert!(
            refused.to_string().contains("\"courier\" refused"),
            "{refused}"
        );
        assert!(ensure_dedicated("postgres://h/courier_bench", "").is_err());
    }

    #[test]
    fn valkeys_process_id_parses_from_info() {
        let info = "# Server\r\nvalkey_version:9.1.2\r\nprocess_id:21126\r\ntcp_port:6380\r\n";
        assert_eq!(parse_process_id(info), Some(21_126));
        assert_eq!(parse_process_id("# Server\r\n"), None);
    }
}
