//! Configuration: the in-memory form ([`BrokerConfig`]) used by the library,
//! and the TOML file form ([`BrokerFileConfig`]) used by the `margo-broker`
//! binary, layered like the other binaries' (defaults → file →
//! `MARGO_BROKER_*` environment → flags; [`Layered`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use margo_schemas::config_layers::{parse_socket_addr, ConfigError, EnvVar, Layered};
use serde::Deserialize;

use crate::clones::CloneRule;
use crate::rate::DeviceRate;

/// Largest remaining length an MQTT 3.1.1 packet can declare.
pub const MQTT_MAX_REMAINING_LENGTH: usize = 268_435_455;

/// The only `version` of the configuration file this crate understands.
pub const CONFIG_VERSION: u32 = 1;

/// User name of the login rumqttd's internal listener requires (the
/// manager's session and the relays of the gateway and the read-only
/// listener present it).
pub const INTERNAL_USERNAME: &str = "margo-internal";

/// Everything [`crate::EmbeddedBroker::start`] needs.
#[derive(Debug, Clone, Default)]
pub struct BrokerConfig {
    /// The operator's plain MQTT listener: read-only (subscribe only),
    /// loopback by default.
    pub mqtt: MqttListenerConfig,
    /// rumqttd's own listener: loopback, login required.
    pub internal: InternalListenerConfig,
    /// rumqttd router and connection limits.
    pub limits: Limits,
    /// The TLS device gateway in front of rumqttd; `None` runs rumqttd alone.
    pub gateway: Option<GatewayConfig>,
}

/// The operator's plain (unencrypted, unauthenticated) listener. It is
/// read-only: clients may subscribe to anything but never publish, set a
/// last will or keep a session, and their client ids are kept apart from
/// the manager's and the devices' (issue 12, finding 2).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttListenerConfig {
    /// Address to listen on; port 0 picks a free port. Default `127.0.0.1:1883`.
    pub listen: SocketAddr,
    /// Permit a non-loopback `listen` address. The plain listener has no
    /// authentication (anyone who reaches it reads the fleet's traffic), so
    /// this is refused unless set explicitly.
    pub allow_non_loopback: bool,
    /// Most connections open at once on this listener. Default 64.
    pub max_connections: usize,
}

impl Default for MqttListenerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883),
            allow_non_loopback: false,
            max_connections: 64,
        }
    }
}

/// rumqttd's own listener. Only the manager's session and the relays (the
/// gateway, the read-only listener) connect here, with the login
/// [`INTERNAL_USERNAME`] and this password.
#[derive(Clone)]
pub struct InternalListenerConfig {
    /// Loopback address; port 0 picks a free port. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The password; `None` draws a random one at every start (only this
    /// process can then connect, which is right when the manager embeds the
    /// broker).
    pub password: Option<String>,
}

impl Default for InternalListenerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            password: None,
        }
    }
}

impl fmt::Debug for InternalListenerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InternalListenerConfig")
            .field("listen", &self.listen)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The internal listener's password kept in `path`: read (surrounding white
/// space trimmed) when the file exists, else a new random one written to a
/// new 0600 file. Shared by a standalone `margo-broker` and the manager
/// that connects to it.
pub fn load_or_create_password(path: &Path) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let password = text.trim().to_string();
            if password.is_empty() {
                return Err(ConfigError::invalid(
                    "password_file",
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(password)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let password = crate::embedded::random_hex(24);
            margo_schemas::private_fs::prepare_file(path).map_err(read_error)?;
            std::fs::write(path, format!("{password}\n")).map_err(read_error)?;
            Ok(password)
        }
        Err(error) => Err(read_error(error)),
    }
}

/// Router and connection limits of the embedded rumqttd.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest MQTT packet (remaining length) accepted. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Most concurrent connections the router holds (devices + manager + operators).
    pub max_connections: usize,
    /// Most unacknowledged QoS 1 messages in flight per connection.
    pub max_inflight: u16,
    /// Time a new connection has to send its CONNECT (rumqttd: at most 65.535 s).
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
    /// Size of one in-memory log segment per filter (rumqttd: at least 1 KiB).
    pub max_segment_bytes: usize,
    /// Segments kept per filter; when exceeded, the oldest is dropped and slow
    /// subscribers silently skip ahead (a rumqttd property).
    pub max_segment_count: usize,
    /// Most packets the router hands one connection per iteration.
    pub max_outgoing_packet_count: u64,
    /// File descriptors kept for known clients: once this close to the
    /// process's open-file limit, the gateway (and the manager's HTTPS
    /// listener) close new connections from source networks that held no
    /// authenticated session in the last 7 days. Default 256
    /// ([`crate::FdReserve`]).
    pub fd_reserve: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_connections: 10_240,
            max_inflight: 100,
            connection_timeout: Duration::from_secs(10),
            max_segment_bytes: 8 * 1024 * 1024,
            max_segment_count: 10,
            max_outgoing_packet_count: 1000,
            fd_reserve: 256,
        }
    }
}

/// The gateway's TLS material, as PEM bytes.
#[derive(Clone)]
pub struct GatewayTls {
    /// The fleet CA certificate(s): client certificates must chain to one of these.
    pub ca_pem: Vec<u8>,
    /// The gateway's certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The gateway's private key (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for GatewayTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The device gateway: TLS 1.3 with client certificates in front of rumqttd.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Public device port; port 0 picks a free one. Default `0.0.0.0:8883`.
    pub listen: SocketAddr,
    /// CA, certificate chain and key.
    pub tls: GatewayTls,
    /// A TLS handshake not finished within this is aborted. Default 10 s.
    pub handshake_timeout: Duration,
    /// After the handshake, the CONNECT packet must arrive within this. Default 10 s.
    pub connect_timeout: Duration,
    /// Most handshakes in progress at once; more connections are closed at once.
    pub max_pending_handshakes: usize,
    /// Most connections in progress (TLS handshake, then the wait for
    /// CONNECT) from one source network: an IPv4 address or an IPv6 /64.
    pub max_pending_per_ip: usize,
    /// Most live connections of one device identity (certificate CN) at
    /// once; more are closed at once. Default 4 (a reconnect that takes
    /// over a half-open session needs 2).
    pub max_connections_per_identity: usize,
    /// Largest MQTT packet (remaining length) a device may send. Default 1 MiB.
    pub max_packet_bytes: usize,
    /// How much one device may send (messages and bytes per second).
    pub device_rate: DeviceRate,
    /// When an identity switching between sources is a suspected clone.
    pub clone_detection: CloneRule,
}

impl GatewayConfig {
    /// Defaults for everything but the TLS material.
    pub fn new(tls: GatewayTls) -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8883),
            tls,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_pending_handshakes: 1024,
            max_pending_per_ip: 64,
            max_connections_per_identity: 4,
            max_packet_bytes: 1024 * 1024,
            device_rate: DeviceRate::default(),
            clone_detection: CloneRule::default(),
        }
    }

    /// Checks the values that can be checked without parsing the PEM material.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("gateway.handshake_timeout", self.handshake_timeout)?;
        positive("gateway.connect_timeout", self.connect_timeout)?;
        at_least(
            "gateway.max_pending_handshakes",
            self.max_pending_handshakes,
            1,
        )?;
        at_least("gateway.max_pending_per_ip", self.max_pending_per_ip, 1)?;
        at_least(
            "gateway.max_connections_per_identity",
            self.max_connections_per_identity,
            1,
        )?;
        at_least("gateway.max_packet_bytes", self.max_packet_bytes, 1)?;
        self.device_rate.validate("gateway.device_rate")?;
        self.clone_detection.validate("gateway.clone_detection")?;
        at_most(
            "gateway.max_packet_bytes",
            self.max_packet_bytes,
            MQTT_MAX_REMAINING_LENGTH,
        )
    }
}

impl BrokerConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.mqtt.listen.ip().is_loopback() && !self.mqtt.allow_non_loopback {
            return Err(ConfigError::invalid(
                "mqtt.listen",
                format!(
                    "{} is not a loopback address; the plain listener has no authentication \
                     (set mqtt.allow_non_loopback = true to override)",
                    self.mqtt.listen
                ),
            ));
        }
        at_least("mqtt.max_connections", self.mqtt.max_connections, 1)?;
        if !self.internal.listen.ip().is_loopback() {
            return Err(ConfigError::invalid(
                "internal.listen",
                format!(
                    "{} is not a loopback address; the internal listener carries the \
                     broker's write access in plain text",
                    self.internal.listen
                ),
            ));
        }
        if self.internal.password.as_deref() == Some("") {
            return Err(ConfigError::invalid(
                "internal.password",
                "must not be empty",
            ));
        }
        self.limits.validate()?;
        if let Some(gateway) = &self.gateway {
            gateway.validate()?;
        }
        Ok(())
    }
}

impl Limits {
    /// Checks the limits against what rumqttd accepts without panicking.
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least("limits.max_payload_bytes", self.max_payload_bytes, 1)?;
        at_most(
            "limits.max_payload_bytes",
            self.max_payload_bytes,
            MQTT_MAX_REMAINING_LENGTH,
        )?;
        at_least("limits.max_connections", self.max_connections, 1)?;
        at_least("limits.max_inflight", usize::from(self.max_inflight), 1)?;
        positive("limits.connection_timeout", self.connection_timeout)?;
        if self.connection_timeout > Duration::from_millis(u64::from(u16::MAX)) {
            return Err(ConfigError::invalid(
                "limits.connection_timeout",
                "rumqttd stores it in a u16 of milliseconds; at most 65.535s",
            ));
        }
        at_least("limits.max_segment_bytes", self.max_segment_bytes, 1024)?;
        at_least(
            "limits.max_segment_bytes",
            self.max_segment_bytes,
            self.max_payload_bytes,
        )?;
        at_least("limits.max_segment_count", self.max_segment_count, 1)?;
        if self.max_outgoing_packet_count == 0 {
            return Err(ConfigError::invalid(
                "limits.max_outgoing_packet_count",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

fn positive(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(field, "must be greater than zero"));
    }
    Ok(())
}

fn at_least(field: &'static str, value: usize, min: usize) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(
            field,
            format!("{value} is below the minimum {min}"),
        ));
    }
    Ok(())
}

fn at_most(field: &'static str, value: usize, max: usize) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::invalid(
            field,
            format!("{value} is above the maximum {max}"),
        ));
    }
    Ok(())
}

/// The `margo-broker` TOML configuration file (see `config/margo-broker.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerFileConfig {
    /// File format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// The operator's read-only loopback listener.
    #[serde(default)]
    pub mqtt: MqttListenerConfig,
    /// rumqttd's own (authenticated) listener.
    #[serde(default)]
    pub internal: InternalFileConfig,
    /// rumqttd limits.
    #[serde(default)]
    pub limits: Limits,
    /// The device gateway; omit the table to run without it.
    pub gateway: Option<GatewayFileConfig>,
}

/// The `[internal]` table: rumqttd's own listener, where a manager
/// running in `external` mode connects with [`INTERNAL_USERNAME`] and the
/// password in `password_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InternalFileConfig {
    /// Loopback address. Default `127.0.0.1:1884`.
    pub listen: SocketAddr,
    /// File holding the password (created 0600 with a random one when
    /// missing). Unset: a random password per start, so only the gateway
    /// and the read-only listener reach rumqttd and no manager can connect.
    pub password_file: Option<PathBuf>,
}

impl Default for InternalFileConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1884),
            password_file: None,
        }
    }
}

/// The `[gateway]` table: like [`GatewayConfig`] but with paths to PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFileConfig {
    /// Public device address. Default `0.0.0.0:8883`.
    #[serde(default = "default_gateway_listen")]
    pub listen: SocketAddr,
    /// Fleet CA certificate (PEM); relative paths are relative to the config file.
    pub ca: PathBuf,
    /// Gateway certificate chain (PEM).
    pub cert: PathBuf,
    /// Gateway private key (PEM).
    pub key: PathBuf,
    /// TLS handshake deadline. Default 10 s.
    #[serde(default = "default_ten_seconds", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Deadline for the CONNECT after the handshake. Default 10 s.
    #[serde(default = "default_ten_seconds", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Cap on handshakes in progress. Default 1024.
    #[serde(default = "default_max_pending")]
    pub max_pending_handshakes: usize,
    /// Cap on connections in progress (handshake, then CONNECT) per source
    /// network (IPv4 address, IPv6 /64). Default 64.
    #[serde(default = "default_max_pending_per_ip")]
    pub max_pending_per_ip: usize,
    /// Cap on live connections per device identity. Default 4.
    #[serde(default = "default_max_per_identity")]
    pub max_connections_per_identity: usize,
    /// `[gateway.device_rate]`: how much one device may send.
    #[serde(default)]
    pub device_rate: DeviceRate,
    /// `[gateway.clone_detection]`: when an identity switching between
    /// source networks is a suspected clone.
    #[serde(default)]
    pub clone_detection: CloneRule,
}

fn default_gateway_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8883)
}
fn default_ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn default_max_pending() -> usize {
    1024
}
fn default_max_pending_per_ip() -> usize {
    64
}
fn default_max_per_identity() -> usize {
    4
}

impl Default for BrokerFileConfig {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            mqtt: MqttListenerConfig::default(),
            internal: InternalFileConfig::default(),
            limits: Limits::default(),
            gateway: None,
        }
    }
}

impl GatewayFileConfig {
    /// The defaults, with no PEM paths yet (a gateway asked for by the
    /// environment alone; [`BrokerFileConfig::validate`] requires them).
    fn without_paths() -> Self {
        Self {
            listen: default_gateway_listen(),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            handshake_timeout: default_ten_seconds(),
            connect_timeout: default_ten_seconds(),
            max_pending_handshakes: default_max_pending(),
            max_pending_per_ip: default_max_pending_per_ip(),
            max_connections_per_identity: default_max_per_identity(),
            device_rate: DeviceRate::default(),
            clone_detection: CloneRule::default(),
        }
    }
}

impl BrokerFileConfig {
    /// Parses TOML text (no validation, no file access).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        margo_schemas::config_layers::parse_toml(text, origin)
    }

    /// Reads and parses a configuration file, without validating it.
    /// Relative PEM and password file paths are resolved against the
    /// file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::from_toml(&text, path)?;
        if let (Some(file), Some(dir)) = (config.internal.password_file.as_mut(), path.parent()) {
            if file.is_relative() {
                *file = dir.join(&*file);
            }
        }
        if let (Some(gateway), Some(dir)) = (config.gateway.as_mut(), path.parent()) {
            for p in [&mut gateway.ca, &mut gateway.cert, &mut gateway.key] {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(config)
    }

    /// Reads, parses and validates a configuration file (no environment;
    /// the binary uses [`Layered::load_layered`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::from_file(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::invalid(
                "version",
                format!(
                    "{} is not supported; expected {CONFIG_VERSION}",
                    self.version
                ),
            ));
        }
        if let Some(gateway) = &self.gateway {
            for (field, path, var) in [
                ("gateway.ca", &gateway.ca, "GATEWAY_CA"),
                ("gateway.cert", &gateway.cert, "GATEWAY_CERT"),
                ("gateway.key", &gateway.key, "GATEWAY_KEY"),
            ] {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::invalid(
                        field,
                        format!("required with a gateway (in [gateway] or {ENV_PREFIX}{var})"),
                    ));
                }
            }
        }
        self.to_config_with(|_| Ok(Vec::new()))?.validate()
    }

    /// Reads the PEM files and builds the in-memory configuration.
    /// Reads (or creates) the internal password file.
    pub fn into_config(self) -> Result<BrokerConfig, ConfigError> {
        self.validate()?;
        let mut config = self.to_config_with(|path| {
            std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        })?;
        if let Some(path) = &self.internal.password_file {
            config.internal.password = Some(load_or_create_password(path)?);
        }
        Ok(config)
    }

    fn to_config_with(
        &self,
        read: impl Fn(&Path) -> Result<Vec<u8>, ConfigError>,
    ) -> Result<BrokerConfig, ConfigError> {
        let gateway = match &self.gateway {
            None => None,
            Some(g) => Some(GatewayConfig {
                listen: g.listen,
                tls: GatewayTls {
                    ca_pem: read(&g.ca)?,
                    cert_pem: read(&g.cert)?,
                    key_pem: read(&g.key)?,
                },
                handshake_timeout: g.handshake_timeout,
                connect_timeout: g.connect_timeout,
                max_pending_handshakes: g.max_pending_handshakes,
                max_pending_per_ip: g.max_pending_per_ip,
                max_connections_per_identity: g.max_connections_per_identity,
                max_packet_bytes: self.limits.max_payload_bytes,
                device_rate: g.device_rate,
                clone_detection: g.clone_detection,
            }),
        };
        Ok(BrokerConfig {
            mqtt: self.mqtt.clone(),
            internal: InternalListenerConfig {
                listen: self.internal.listen,
                password: None,
            },
            limits: self.limits.clone(),
            gateway,
        })
    }

    /// The `[gateway]` table, created (without PEM paths) if the file has none.
    fn gateway_mut(&mut self) -> &mut GatewayFileConfig {
        self.gateway
            .get_or_insert_with(GatewayFileConfig::without_paths)
    }
}

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "MARGO_BROKER_";

impl Layered for BrokerFileConfig {
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const ENV_VARS: &'static [&'static str] = &[
        "MQTT_LISTEN",
        "INTERNAL_LISTEN",
        "INTERNAL_PASSWORD_FILE",
        "GATEWAY_LISTEN",
        "GATEWAY_CA",
        "GATEWAY_CERT",
        "GATEWAY_KEY",
    ];
    /// `margo-broker` has no flags that change the configuration.
    type Flags = ();

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(path)
    }

    fn apply_env_var(
        &mut self,
        name: &str,
        var: &str,
        value: String,
    ) -> Result<EnvVar, ConfigError> {
        match name {
            "MQTT_LISTEN" => self.mqtt.listen = parse_socket_addr(var, &value)?,
            "INTERNAL_LISTEN" => self.internal.listen = parse_socket_addr(var, &value)?,
            "INTERNAL_PASSWORD_FILE" => self.internal.password_file = Some(PathBuf::from(value)),
            "GATEWAY_LISTEN" => self.gateway_mut().listen = parse_socket_addr(var, &value)?,
            "GATEWAY_CA" => self.gateway_mut().ca = PathBuf::from(value),
            "GATEWAY_CERT" => self.gateway_mut().cert = PathBuf::from(value),
            "GATEWAY_KEY" => self.gateway_mut().key = PathBuf::from(value),
            _ => return Ok(EnvVar::Unknown),
        }
        Ok(EnvVar::Applied)
    }

    fn apply_flags(&mut self, (): ()) {}

    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of<T: std::fmt::Debug>(result: Result<T, ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    const EXAMPLE: &str = include_str!("../../config/margo-broker.toml");

    #[test]
    fn example_config_parses_and_validates() {
        let config = BrokerFileConfig::from_toml(EXAMPLE, Path::new("example.toml"))
            .expect("example parses");
        config.validate().expect("example validates");
        let gateway = config.gateway.expect("example has a gateway");
        assert_eq!(gateway.handshake_timeout, Duration::from_secs(10));
        assert!(config.mqtt.listen.ip().is_loopback());
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let config = BrokerFileConfig::from_toml("version = 1", Path::new("x")).expect("parses");
        config.validate().expect("validates");
        let config = config.into_config().expect("no files to read");
        assert_eq!(config.mqtt.listen.port(), 1883);
        assert!(config.gateway.is_none());
    }

    #[test]
    fn unknown_fields_and_wrong_version_are_rejected() {
        assert!(BrokerFileConfig::from_toml("version = 1\nlisten = 3", Path::new("x")).is_err());
        let config = BrokerFileConfig::from_toml("version = 2", Path::new("x")).expect("parses");
        assert_eq!(field_of(config.validate()), "version");
    }

    #[test]
    fn validation_names_the_field() {
        let text = "version = 1\n[mqtt]\nlisten = \"0.0.0.0:1883\"\n";
        let config = BrokerFileConfig::from_toml(text, Path::new("x")).expect("parses");
        assert_eq!(field_of(config.validate()), "mqtt.listen");
        let text = "version = 1\n[limits]\nconnection_timeout = \"2m\"\n";
        let config = BrokerFileConfig::from_toml(text, Path::new("x")).expect("parses");
        assert_eq!(field_of(config.validate()), "limits.connection_timeout");
        let text = "version = 1\n[gateway]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nhandshake_timeout = \"0s\"\n";
        let config = BrokerFileConfig::from_toml(text, Path::new("x")).expect("parses");
        assert_eq!(field_of(config.validate()), "gateway.handshake_timeout");
    }

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_the_file_and_unknown_variables_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("broker.toml");
        std::fs::write(
            &file,
            "version = 1\n[mqtt]\nlisten = \"127.0.0.1:1884\"\n[gateway]\nlisten = \"127.0.0.1:8884\"\nca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
        )
        .expect("write");
        let c = BrokerFileConfig::load_layered(Some(&file), vars(&[]), ()).expect("file only");
        assert_eq!(c.mqtt.listen.port(), 1884);
        let gateway = c.gateway.expect("gateway");
        assert_eq!(
            gateway.ca,
            dir.path().join("ca.pem"),
            "relative to the file"
        );

        let c = BrokerFileConfig::load_layered(
            Some(&file),
            vars(&[
                ("MARGO_BROKER_MQTT_LISTEN", "127.0.0.1:0"),
                ("MARGO_BROKER_GATEWAY_LISTEN", "[::1]:0"),
                ("MARGO_BROKER_GATEWAY_KEY", "/etc/k.pem"),
                ("MARGO_AGENT_DATA_DIR", "/not/ours"),
            ]),
            (),
        )
        .expect("env over file");
        assert_eq!(c.mqtt.listen.port(), 0);
        let gateway = c.gateway.expect("gateway");
        assert_eq!(gateway.listen, "[::1]:0".parse().expect("addr"));
        assert_eq!(gateway.key, PathBuf::from("/etc/k.pem"));
        assert_eq!(gateway.cert, dir.path().join("cert.pem"));

        let err = BrokerFileConfig::load_layered(
            Some(&file),
            vars(&[("MARGO_BROKER_MQTT_LISTN", "127.0.0.1:0")]),
            (),
        );
        assert_eq!(field_of(err), "MARGO_BROKER_MQTT_LISTN");
        let err = BrokerFileConfig::load_layered(
            Some(&file),
            vars(&[("MARGO_BROKER_MQTT_LISTEN", "localhost")]),
            (),
        );
        assert_eq!(field_of(err), "MARGO_BROKER_MQTT_LISTEN");
        // A gateway from the environment alone needs all three PEM paths.
        let bare = dir.path().join("bare.toml");
        std::fs::write(&bare, "version = 1\n").expect("write");
        let err = BrokerFileConfig::load_layered(
            Some(&bare),
            vars(&[
                ("MARGO_BROKER_GATEWAY_CA", "/ca.pem"),
                ("MARGO_BROKER_GATEWAY_CERT", "/cert.pem"),
            ]),
            (),
        );
        assert_eq!(field_of(err), "gateway.key");
    }

    #[test]
    fn every_variable_is_read_and_documented() {
        let docs = include_str!("../../docs/configuration.md");
        for name in BrokerFileConfig::ENV_VARS {
            let var = format!("{ENV_PREFIX}{name}");
            let mut c = BrokerFileConfig::default();
            let known = c.apply_env_var(name, &var, "127.0.0.1:1".into());
            assert!(matches!(known, Ok(EnvVar::Applied)), "{var} is not read");
            assert!(
                docs.contains(&format!("`{var}`")),
                "{var} is not in docs/configuration.md"
            );
        }
    }
}
