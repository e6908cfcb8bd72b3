//! Validation of `[workers]`: the worker count and placement, the driver,
//! and the per-core settings with their `[workers.cores.N]` overrides.

use super::*;

/// The upstream ring's buffer size: at least a page (receives from 4 KiB
/// hand their buffer over rather than copy it), at most 1 MiB (64 of them
/// already make a 64 MiB ring per worker).
const UPSTREAM_RECV_BUFFER_MIN: u64 = 4 * 1024;
const UPSTREAM_RECV_BUFFER_MAX: u64 = 1024 * 1024;

pub(super) fn validate_workers(raw: &raw::RawWorkers) -> Result<WorkersConfig, ConfigError> {
    let defaults = WorkersConfig::default();
    let count = match &raw.count {
        None => None,
        Some(toml::Value::String(s)) if s == "auto" => None,
        Some(toml::Value::Integer(n)) if *n >= 1 && *n <= 1024 => Some(*n as usize),
        Some(toml::Value::Integer(_)) => {
            return Err(invalid(
                "workers.count",
                "must be between 1 and 1024, or \"auto\"",
            ))
        }
        Some(other) => {
            return Err(invalid(
                "workers.count",
                format!("expected \"auto\" or a number, found `{other}`"),
            ))
        }
    };
    if let Some(cpus) = &raw.cpus {
        if cpus.is_empty() {
            return Err(invalid(
                "workers.cpus",
                "an empty list pins to nothing; remove the key to use every CPU",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for cpu in cpus {
            if !seen.insert(cpu) {
                return Err(invalid(
                    "workers.cpus",
                    format!("CPU {cpu} is listed twice"),
                ));
            }
        }
        if let Some(n) = count {
            if n > cpus.len() {
                return Err(invalid(
                    "workers.count",
                    format!("{n} workers but only {} CPUs in workers.cpus", cpus.len()),
                ));
            }
        }
    }
    let driver = match raw.driver.as_deref() {
        None | Some("auto") => DriverChoice::Auto,
        Some("io_uring") => DriverChoice::IoUring,
        Some("epoll") => DriverChoice::Epoll,
        Some(other) => {
            return Err(invalid(
                "workers.driver",
                format!("`{other}` is not a driver (use \"auto\", \"io_uring\" or \"epoll\")"),
            ))
        }
    };
    let ring_entries = raw.ring_entries.unwrap_or(defaults.ring_entries);
    if !(256..=32768).contains(&ring_entries) || !ring_entries.is_power_of_two() {
        return Err(invalid(
            "workers.ring_entries",
            "must be a power of two between 256 and 32768",
        ));
    }
    let ring_size = |value: Option<u32>, default: u16, key| {
        let n = value.unwrap_or(u32::from(default));
        if n != 0 && (n > 32768 || !n.is_power_of_two()) {
            return Err(invalid(
                key,
                "must be 0 (none) or a power of two up to 32768",
            ));
        }
        Ok(n as u16)
    };
    let recv_buffers = ring_size(
        raw.recv_buffers,
        defaults.recv_buffers,
        "workers.recv_buffers",
    )?;
    let upstream_recv_buffers = ring_size(
        raw.upstream_recv_buffers,
        defaults.upstream_recv_buffers,
        "workers.upstream_recv_buffers",
    )?;
    let upstream_recv_buffer_size = match raw.upstream_recv_buffer_size {
        None => defaults.upstream_recv_buffer_size,
        Some(size) if (UPSTREAM_RECV_BUFFER_MIN..=UPSTREAM_RECV_BUFFER_MAX).contains(&size.0) => {
            size.0 as usize
        }
        Some(_) => {
            return Err(invalid(
                "workers.upstream_recv_buffer_size",
                "must be between 4KiB and 1MiB",
            ))
        }
    };
    let sqpoll = if raw.sqpoll.unwrap_or(false) {
        Some(
            raw.sqpoll_idle
                .map(|d| d.0)
                .unwrap_or(Duration::from_millis(1000)),
        )
    } else {
        if raw.sqpoll_idle.is_some() {
            return Err(invalid(
                "workers.sqpoll_idle",
                "only applies with `sqpoll = true`",
            ));
        }
        None
    };
    let per_core = apply_per_core(
        "workers",
        &PerCoreConfig::default(),
        PerCoreFields {
            max_connections: raw.max_connections,
            max_connections_per_ip: raw.max_connections_per_ip,
            upstream_pool_size: raw.upstream_pool_size,
            upstream_idle_timeout: raw.upstream_idle_timeout.map(|d| d.0),
            client_buffer_size: raw.client_buffer_size.map(|s| s.0),
            upstream_buffer_size: raw.upstream_buffer_size.map(|s| s.0),
            cache_size: raw.cache_size.map(|s| s.0),
            cache_max_object: raw.cache_max_object.map(|s| s.0),
        },
    )?;
    let mut overrides = HashMap::new();
    for (i, o) in raw.overrides.iter().enumerate() {
        let key = format!("workers.override[{i}]");
        if overrides.contains_key(&o.core) {
            return Err(invalid(
                format!("{key}.core"),
                format!("core {} already has an override", o.core),
            ));
        }
        let settings = apply_per_core(
            &key,
            &per_core,
            PerCoreFields {
                max_connections: o.max_connections,
                max_connections_per_ip: o.max_connections_per_ip,
                upstream_pool_size: o.upstream_pool_size,
                upstream_idle_timeout: o.upstream_idle_timeout.map(|d| d.0),
                client_buffer_size: o.client_buffer_size.map(|s| s.0),
                upstream_buffer_size: o.upstream_buffer_size.map(|s| s.0),
                cache_size: o.cache_size.map(|s| s.0),
                cache_max_object: o.cache_max_object.map(|s| s.0),
            },
        )?;
        overrides.insert(o.core, settings);
    }
    Ok(WorkersConfig {
        count,
        cpus: raw.cpus.clone(),
        pin: raw.pin.unwrap_or(true),
        driver,
        ring_entries,
        recv_buffers,
        upstream_recv_buffers,
        upstream_recv_buffer_size,
        sqpoll,
        per_core,
        overrides,
    })
}

struct PerCoreFields {
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    upstream_pool_size: Option<usize>,
    upstream_idle_timeout: Option<Duration>,
    client_buffer_size: Option<u64>,
    upstream_buffer_size: Option<u64>,
    cache_size: Option<u64>,
    cache_max_object: Option<u64>,
}

fn apply_per_core(
    prefix: &str,
    base: &PerCoreConfig,
    fields: PerCoreFields,
) -> Result<PerCoreConfig, ConfigError> {
    let mut out = base.clone();
    if let Some(n) = fields.max_connections {
        if n == 0 || n > MAX_CONNECTIONS {
            return Err(invalid(
                format!("{prefix}.max_connections"),
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        out.max_connections = n;
    }
    if let Some(n) = fields.max_connections_per_ip {
        // 0 turns the cap off.
        if n > MAX_CONNECTIONS {
            return Err(invalid(
                format!("{prefix}.max_connections_per_ip"),
                format!("must be at most {MAX_CONNECTIONS} (0: no cap)"),
            ));
        }
        out.max_connections_per_ip = (n > 0).then_some(n);
    }
    if let Some(n) = fields.upstream_pool_size {
        if n > MAX_POOL_SIZE {
            return Err(invalid(
                format!("{prefix}.upstream_pool_size"),
                format!("must be at most {MAX_POOL_SIZE}"),
            ));
        }
        out.upstream_pool_size = n;
    }
    if let Some(d) = fields.upstream_idle_timeout {
        if d.is_zero() {
            return Err(invalid(
                format!("{prefix}.upstream_idle_timeout"),
                "must be longer than zero (set upstream_pool_size = 0 to disable pooling)",
            ));
        }
        out.upstream_idle_timeout = d;
    }
    for (name, value, slot) in [
        (
            "client_buffer_size",
            fields.client_buffer_size,
            &mut out.client_buffer_size,
        ),
        (
            "upstream_buffer_size",
            fields.upstream_buffer_size,
            &mut out.upstream_buffer_size,
        ),
    ] {
        if let Some(v) = value {
            if !(1024..=16 << 20).contains(&v) {
                return Err(invalid(
                    format!("{prefix}.{name}"),
                    "must be between 1KiB and 16MiB",
                ));
            }
            *slot = v as usize;
        }
    }
    if let Some(size) = fields.cache_size {
        out.cache_size = size;
    }
    if let Some(size) = fields.cache_max_object {
        if size == 0 {
            return Err(invalid(
                format!("{prefix}.cache_max_object"),
                "must be larger than zero",
            ));
        }
        out.cache_max_object = size;
    }
    Ok(out)
}
