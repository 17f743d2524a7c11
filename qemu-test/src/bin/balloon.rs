//! `balloon`: drive the balloon of the `make run` VM from the host, and start
//! that VM (`balloon run`, what `scripts/run.sh` calls, so the interactive VM
//! uses the harness's QEMU command line).
//!
//! ```text
//! balloon [--qmp PATH] set SIZE     set the guest memory target (512M, 1G, ...)
//! balloon [--qmp PATH] info         actual guest memory and balloon size
//! balloon [--qmp PATH] stats [SECS] guest statistics (enables polling if off)
//! balloon [--qmp PATH] exec CMD...  run a shell command in the guest (agent)
//! balloon run [-- QEMU ARGS...]     boot the interactive VM (serial on stdio)
//! ```
//!
//! The QMP socket is `--qmp PATH`, else `$BALLOON_QMP`, else
//! `build/run/qmp.sock` in the checkout; the agent socket is `agent.sock`
//! beside it.

use anyhow::{bail, Context, Result};
use qemu_test::rig::accel::{self, AccelRequest};
use qemu_test::rig::agent::Agent;
use qemu_test::rig::qemu::{self, QemuSpec, Serial};
use qemu_test::{
    format_bytes, parse_size, Driver, GuestImage, GuestStats, QmpClient, VmConfig, MIB,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
usage: balloon [--qmp PATH] COMMAND

commands:
  set SIZE        set the guest memory target like QMP `balloon` (e.g. 512M, 1G;
                  the balloon then holds RAM - SIZE)
  info            QMP query-balloon: actual guest memory, RAM, balloon size
  stats [SECS]    guest memory statistics (enables polling every SECS, default 2,
                  if it is off)
  exec CMD...     run a shell command in the guest through the agent
  run [-- ARGS]   boot the interactive VM (`make run`): serial console on stdio,
                  QMP at build/run/qmp.sock; extra QEMU ARGS after --
                  env: BALLOON_KDIR, BALLOON_INITRAMFS (set by `make run`),
                  DRIVER=c|rs|none (default: rs if virtio_balloon_rs.ko is in the
                  initramfs, else c), MEM (MiB or 1G-style, default 1024),
                  SMP (default 2), ACCEL=tcg|kvm|auto, LOGLEVEL (default 7)

options:
  --qmp PATH      QMP socket (default $BALLOON_QMP, else build/run/qmp.sock)";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("balloon: error: {e:#}");
        std::process::exit(1);
    }
}

/// The checkout's `build/run` directory.
fn default_run_dir() -> PathBuf {
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR"));
    pkg.parent().unwrap_or(pkg).join("build/run")
}

fn real_main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut qmp_path: Option<PathBuf> = std::env::var_os("BALLOON_QMP")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    while let Some(a) = args.first().cloned() {
        match a.as_str() {
            "--qmp" => {
                args.remove(0);
                if args.is_empty() {
                    bail!("--qmp needs a path\n\n{USAGE}");
                }
                qmp_path = Some(args.remove(0).into());
            }
            s if s.starts_with("--qmp=") => {
                qmp_path = Some(s["--qmp=".len()..].into());
                args.remove(0);
            }
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => break,
        }
    }
    let qmp_path = qmp_path.unwrap_or_else(|| default_run_dir().join("qmp.sock"));
    let Some(cmd) = args.first().cloned() else {
        bail!("no command\n\n{USAGE}");
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "set" => {
            let [size] = rest else {
                bail!("usage: balloon set SIZE (e.g. 512M)");
            };
            cmd_set(&qmp_path, parse_size(size)?)
        }
        "info" => cmd_info(&qmp_path),
        "stats" => {
            let secs = match rest {
                [] => 2,
                [s] => s.parse().with_context(|| format!("bad interval {s:?}"))?,
                _ => bail!("usage: balloon stats [SECS]"),
            };
            cmd_stats(&qmp_path, secs)
        }
        "exec" => {
            if rest.is_empty() {
                bail!("usage: balloon exec CMD...");
            }
            cmd_exec(&qmp_path, &rest.join(" "))
        }
        "run" => {
            let extra: Vec<String> = match rest.first().map(String::as_str) {
                Some("--") => rest[1..].to_vec(),
                Some(_) => bail!("usage: balloon run [-- QEMU ARGS...]"),
                None => Vec::new(),
            };
            cmd_run(&qmp_path, extra)
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// Connects to the running VM's QMP socket with a clear error if none runs.
fn connect(path: &Path) -> Result<QmpClient> {
    if !path.exists() {
        bail!(
            "no VM running: no QMP socket at {} (start one with `make run`, or pass --qmp PATH)",
            path.display()
        );
    }
    QmpClient::connect(path, Duration::from_secs(5)).with_context(|| {
        format!(
            "cannot talk to a VM at {} (is `make run` still running?)",
            path.display()
        )
    })
}

fn ram_size(q: &mut QmpClient) -> Result<u64> {
    Ok(q.execute(&qapi::qmp::query_memory_size_summary {})?
        .base_memory)
}

fn cmd_set(path: &Path, target: u64) -> Result<()> {
    let mut q = connect(path)?;
    let ram = ram_size(&mut q)?;
    if target == 0 || target > ram {
        bail!(
            "target {} is not between 1 byte and the guest RAM {}",
            format_bytes(target),
            format_bytes(ram)
        );
    }
    q.execute(&qapi::qmp::balloon {
        value: target as i64,
    })?;
    let actual = q.execute(&qapi::qmp::query_balloon {})?.actual as u64;
    println!(
        "target: guest memory {} (balloon {}); actual now {} (the guest driver works towards it; \
         `balloon info` shows progress)",
        format_bytes(target),
        format_bytes(ram - target),
        format_bytes(actual)
    );
    Ok(())
}

fn cmd_info(path: &Path) -> Result<()> {
    let mut q = connect(path)?;
    let actual = q.execute(&qapi::qmp::query_balloon {})?.actual as u64;
    let ram = ram_size(&mut q)?;
    println!("actual:  {}", format_bytes(actual));
    println!("ram:     {}", format_bytes(ram));
    println!("balloon: {}", format_bytes(ram.saturating_sub(actual)));
    Ok(())
}

fn qom_get(q: &mut QmpClient, property: &str) -> Result<serde_json::Value> {
    q.execute(&qapi::qmp::qom_get {
        path: qemu_test::rig::vm::BALLOON_QOM_PATH.into(),
        property: property.into(),
    })
}

fn cmd_stats(path: &Path, secs: u64) -> Result<()> {
    let mut q = connect(path)?;
    let interval = qom_get(&mut q, "guest-stats-polling-interval")?
        .as_u64()
        .unwrap_or(0);
    let mut stats = GuestStats::from_json(&qom_get(&mut q, "guest-stats")?)?;
    if interval == 0 {
        println!("(stats polling was off: enabling it every {secs} s)");
        q.execute(&qapi::qmp::qom_set {
            path: qemu_test::rig::vm::BALLOON_QOM_PATH.into(),
            property: "guest-stats-polling-interval".into(),
            value: secs.into(),
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let deadline = Instant::now() + Duration::from_secs(secs + 10);
        while stats.last_update <= now {
            if Instant::now() > deadline {
                bail!(
                    "no statistics from the guest within {} s (is a balloon driver loaded?)",
                    secs + 10
                );
            }
            std::thread::sleep(Duration::from_millis(200));
            stats = GuestStats::from_json(&qom_get(&mut q, "guest-stats")?)?;
        }
    } else if stats.last_update == 0 {
        bail!("polling is on (every {interval} s) but the guest has sent no statistics yet (is a balloon driver loaded?)");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    println!(
        "last update: {} s ago (unix time {})",
        now.saturating_sub(stats.last_update),
        stats.last_update
    );
    for (k, v) in &stats.stats {
        let is_bytes = k.ends_with("-memory") || k.ends_with("-caches");
        if is_bytes {
            println!("{k:24} {}", format_bytes(*v));
        } else {
            println!("{k:24} {v}");
        }
    }
    if !stats.unreported.is_empty() {
        let names: Vec<&str> = stats.unreported.iter().map(String::as_str).collect();
        println!("not reported: {}", names.join(", "));
    }
    Ok(())
}

fn cmd_exec(qmp_path: &Path, cmd: &str) -> Result<()> {
    let path = qmp_path.with_file_name("agent.sock");
    if !path.exists() {
        bail!(
            "no VM running: no agent socket at {} (start one with `make run`)",
            path.display()
        );
    }
    let mut agent = Agent::connect(&path)?;
    let id = agent.send(cmd)?;
    let out = agent
        .recv(&id, Instant::now() + Duration::from_secs(600), || Ok(()))?
        .context("no reply from the guest agent within 600 s")?;
    print!("{}", out.output);
    std::process::exit(out.code);
}

/// `MEM`: MiB, or a size with a unit.
fn env_mem_mib() -> Result<u64> {
    match std::env::var("MEM") {
        Ok(m) if !m.trim().is_empty() => {
            let m = m.trim();
            if let Ok(n) = m.parse::<u64>() {
                Ok(n)
            } else {
                Ok(parse_size(m).context("bad MEM")? / MIB)
            }
        }
        _ => Ok(1024),
    }
}

fn cmd_run(qmp_path: &Path, extra_qemu: Vec<String>) -> Result<()> {
    use std::os::unix::process::CommandExt;

    let image = GuestImage::from_env().context("`balloon run` is what `make run` calls")?;
    let has_rs = qemu_test::rig::cpio::contains_file(&image.initramfs, "virtio_balloon_rs.ko")?;
    let driver = match std::env::var("DRIVER").unwrap_or_default().trim() {
        "" => Some(if has_rs { Driver::Rust } else { Driver::C }),
        "none" => None,
        d => Some(Driver::parse(d)?),
    };
    if driver == Some(Driver::Rust) && !has_rs {
        bail!(
            "DRIVER=rs but virtio_balloon_rs.ko is not in {} (build it with `make`)",
            image.initramfs.display()
        );
    }
    let smp: u32 = match std::env::var("SMP") {
        Ok(s) if !s.trim().is_empty() => s.trim().parse().context("bad SMP")?,
        _ => 2,
    };
    let loglevel: u8 = match std::env::var("LOGLEVEL") {
        Ok(s) if !s.trim().is_empty() => s.trim().parse().context("bad LOGLEVEL")?,
        _ => 7,
    };
    let mem = env_mem_mib()?;
    let (accel, why) = accel::resolve(AccelRequest::from_env()?, None)?;

    let dir = qmp_path.parent().context("bad QMP socket path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let agent_path = qmp_path.with_file_name("agent.sock");
    if qmp_path.exists() {
        if std::os::unix::net::UnixStream::connect(qmp_path).is_ok() {
            bail!(
                "a VM is already running with QMP at {} (quit it first, or use another --qmp)",
                qmp_path.display()
            );
        }
        std::fs::remove_file(qmp_path).ok();
    }
    std::fs::remove_file(&agent_path).ok();

    let cfg = VmConfig::new("run")
        .memory_mib(mem)
        .smp(smp)
        .driver_opt(driver)
        .loglevel(loglevel)
        .accel(accel)
        .qemu_args(extra_qemu);
    let spec = QemuSpec {
        cfg: &cfg,
        image: &image,
        accel,
        qmp_socket: qmp_path.to_path_buf(),
        agent_socket: agent_path,
        serial: Serial::Interactive,
        cmdline_extra: vec!["balloon.shell=1".into()],
        disk_dir: dir.to_path_buf(),
    };
    qemu::create_disks(&spec)?;
    let me = "scripts/balloon";
    let qmp_opt = if *qmp_path == default_run_dir().join("qmp.sock") {
        String::new()
    } else {
        format!("--qmp {} ", qmp_path.display())
    };
    eprintln!(
        "Booting a {mem} MiB, {smp}-vCPU guest ({}, accel {accel}{}) with driver {}.",
        image.kernel.display(),
        if why.is_empty() {
            String::new()
        } else {
            format!(": {why}")
        },
        driver
            .map(|d| d.module_name())
            .unwrap_or("none (balloon.load=none)"),
    );
    eprintln!("QMP socket: {}", qmp_path.display());
    eprintln!("From another terminal:");
    eprintln!("  {me} {qmp_opt}set 512M     # guest memory target (balloon = RAM - 512M)");
    eprintln!("  {me} {qmp_opt}info         # actual guest memory and balloon size");
    eprintln!("  {me} {qmp_opt}stats        # guest memory statistics");
    eprintln!("  {me} {qmp_opt}exec dmesg   # run a command in the guest");
    eprintln!("Quit: Ctrl-A X (Ctrl-A C: QEMU monitor). Ctrl-C goes to the guest.");
    eprintln!();
    let err = qemu::command(&spec).exec();
    Err(err).context("executing QEMU")
}
