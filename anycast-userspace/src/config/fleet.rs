//! The `[fleet]` section: where this edge finds the fleet's shared state (etcd), and who it is.
//!
//! Without `[fleet]` the agent runs from its file alone. With it, the VIPs, backends, weights,
//! drains, hash seed and ring size come from the fleet document in etcd (`crate::fleet`), and
//! the file's own `[[vip]]` sections are only the default used before the first document is read.

use super::*;

/// Seconds; the lease of an edge's registration. An edge that stops heartbeating disappears
/// from `anycast fleet status` within this time.
pub const DEFAULT_LEASE_TTL_S: i64 = 5;
pub const DEFAULT_FLEET_PREFIX: &str = "/anycast";
/// Where the last applied fleet document is kept, so that an edge restarting while etcd is
/// down starts from it.
pub const DEFAULT_FLEET_CACHE_DIR: &str = "/var/lib/anycast/fleet";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub endpoints: Vec<String>,
    pub prefix: Option<String>,
    pub edge: String,
    pub pop: String,
    pub lease_ttl_s: Option<i64>,
    pub cache_dir: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// TLS towards etcd: the CA that signs the servers' certificates, and optionally a client
/// certificate and key (both or neither).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FleetTls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FleetAuth {
    pub user: String,
    #[serde(skip_serializing)]
    pub password: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FleetConfig {
    pub endpoints: Vec<String>,
    /// Without a trailing slash; keys are `{prefix}/config`, `{prefix}/edges/{edge}`...
    pub prefix: String,
    pub edge: String,
    pub pop: String,
    pub lease_ttl_s: u32,
    pub cache_dir: PathBuf,
    pub auth: Option<FleetAuth>,
    pub tls: Option<FleetTls>,
}

/// A name that goes into an etcd key: no slashes, no spaces, not empty.
fn key_part(field: &str, s: &str) -> Result<String, ConfigError> {
    if s.is_empty() || s.len() > 64 {
        return Err(invalid(field, format!("{s:?} must be 1 to 64 characters")));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(
            field,
            format!("{s:?} contains {c:?}; use letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(s.to_owned())
}

pub(super) fn validate_fleet(raw: RawFleet) -> Result<FleetConfig, ConfigError> {
    let RawFleet {
        endpoints,
        prefix,
        edge,
        pop,
        lease_ttl_s,
        cache_dir,
        user,
        password,
        ca,
        cert,
        key,
    } = raw;
    if endpoints.is_empty() {
        return Err(invalid(
            "fleet.endpoints",
            "no etcd endpoint listed (e.g. [\"http://127.0.0.1:2379\"])",
        ));
    }
    for (i, e) in endpoints.iter().enumerate() {
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e);
        let ok = rest
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok || rest.contains('/') || e.contains(char::is_whitespace) {
            return Err(invalid(
                format!("fleet.endpoints[{i}]"),
                format!("{e:?} is not HOST:PORT (optionally with http:// or https://)"),
            ));
        }
    }
    let prefix = prefix.unwrap_or_else(|| DEFAULT_FLEET_PREFIX.to_owned());
    let prefix = prefix.trim_end_matches('/').to_owned();
    if !prefix.starts_with('/') || prefix.contains(char::is_whitespace) {
        return Err(invalid(
            "fleet.prefix",
            format!("{prefix:?} must start with '/' and contain no spaces"),
        ));
    }
    let edge = key_part("fleet.edge", &edge)?;
    let pop = key_part("fleet.pop", &pop)?;
    let lease_ttl_s = int_in(
        "fleet.lease_ttl_s",
        lease_ttl_s.unwrap_or(DEFAULT_LEASE_TTL_S),
        2,
        300,
    )?;
    let cache_dir = PathBuf::from(cache_dir.unwrap_or_else(|| DEFAULT_FLEET_CACHE_DIR.to_owned()));
    let auth = match (user, password) {
        (None, None) => None,
        (Some(user), Some(password)) if !user.is_empty() => Some(FleetAuth { user, password }),
        (Some(_), Some(_)) => return Err(invalid("fleet.user", "is empty")),
        (Some(_), None) => return Err(invalid("fleet.password", "is missing (fleet.user is set)")),
        (None, Some(_)) => return Err(invalid("fleet.user", "is missing (fleet.password is set)")),
    };
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (Some(_), None) => return Err(invalid("fleet.key", "is missing (fleet.cert is set)")),
        (None, Some(_)) => return Err(invalid("fleet.cert", "is missing (fleet.key is set)")),
    };
    let tls = match (ca, identity) {
        (None, None) => None,
        (Some(ca), identity) => Some(FleetTls {
            ca: PathBuf::from(ca),
            identity,
        }),
        (None, Some(_)) => {
            return Err(invalid(
                "fleet.ca",
                "a client certificate is set without the CA that signs etcd's certificates",
            ));
        }
    };
    if tls.is_some()
        && let Some(e) = endpoints.iter().find(|e| e.starts_with("http://"))
    {
        return Err(invalid(
            "fleet.endpoints",
            format!("{e:?} is plain http:// while fleet.ca (TLS) is set"),
        ));
    }
    Ok(FleetConfig {
        endpoints,
        prefix,
        edge,
        pop,
        lease_ttl_s,
        cache_dir,
        auth,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_fleet(section: &str) -> Result<Config, ConfigError> {
        Config::parse(&ConfigBuilder::reference().section("fleet", section).toml())
    }

    #[test]
    fn a_minimal_fleet_section_takes_the_defaults() {
        let c =
            with_fleet("endpoints = [\"127.0.0.1:2379\"]\nedge = \"e1\"\npop = \"ams\"").unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.prefix, "/anycast");
        assert_eq!(f.lease_ttl_s, 5);
        assert_eq!(f.cache_dir, PathBuf::from(DEFAULT_FLEET_CACHE_DIR));
        assert_eq!((f.auth, f.tls), (None, None));
        assert_eq!(
            Config::parse(&ConfigBuilder::reference().toml())
                .unwrap()
                .fleet,
            None
        );
    }

    #[test]
    fn tls_and_auth_are_read_together() {
        let f = with_fleet(
            "endpoints = [\"https://etcd:2379\"]\nedge = \"e1\"\npop = \"ams\"\nprefix = \"/x/\"\nuser = \"u\"\npassword = \"p\"\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"",
        )
        .unwrap()
        .fleet
        .unwrap();
        assert_eq!(f.prefix, "/x");
        assert_eq!(f.auth.unwrap().user, "u");
        let tls = f.tls.unwrap();
        assert_eq!(tls.ca, PathBuf::from("/ca.pem"));
        assert_eq!(
            tls.identity,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
    }

    #[test]
    fn bad_fleet_sections_are_refused_naming_the_field() {
        let base = "edge = \"e1\"\npop = \"ams\"\n";
        for (extra, want) in [
            ("endpoints = []", "fleet.endpoints: no etcd endpoint listed"),
            (
                "endpoints = [\"etcd\"]",
                "fleet.endpoints[0]: \"etcd\" is not HOST:PORT",
            ),
            (
                "endpoints = [\"a:1\"]\nuser = \"u\"",
                "fleet.password: is missing (fleet.user is set)",
            ),
            (
                "endpoints = [\"a:1\"]\ncert = \"/c\"",
                "fleet.key: is missing (fleet.cert is set)",
            ),
            (
                "endpoints = [\"http://a:1\"]\nca = \"/ca\"",
                "fleet.endpoints: \"http://a:1\" is plain http://",
            ),
            (
                "endpoints = [\"a:1\"]\nlease_ttl_s = 1",
                "fleet.lease_ttl_s: 1 is out of range 2..=300",
            ),
            (
                "endpoints = [\"a:1\"]\nprefix = \"anycast\"",
                "fleet.prefix: \"anycast\" must start with '/'",
            ),
        ] {
            let e = with_fleet(&format!("{base}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{extra:?}: {e}");
        }
        let e = with_fleet("endpoints = [\"a:1\"]\nedge = \"e/1\"\npop = \"ams\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("fleet.edge: \"e/1\" contains '/'"), "{e}");
    }
}
