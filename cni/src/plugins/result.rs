//! Parsing CNI results: the addresses and interfaces a plugin chain reports.

use std::net::IpAddr;

use serde_json::Value;

/// An address from a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResultIp {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Index into the result's interfaces, when given.
    pub interface: Option<usize>,
}

/// An interface from a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResultInterface {
    /// Interface name.
    pub name: String,
    /// The namespace path it lives in; empty for the node's.
    pub sandbox: String,
}

/// The parts of a result Berth uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct CniResult {
    /// Interfaces (0.3.0 and later).
    pub interfaces: Vec<ResultInterface>,
    /// Addresses.
    pub ips: Vec<ResultIp>,
}

fn parse_cidr_addr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("address {s:?} has no prefix"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("address {s:?} is not an IP address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("address {s:?} has a bad prefix"))?;
    if prefix > if ip.is_ipv4() { 32 } else { 128 } {
        return Err(format!("address {s:?} has a bad prefix"));
    }
    Ok((ip, prefix))
}

/// The string field `key` of a result object.
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Parses a result in any CNI version: `ips`/`interfaces` (0.3.0 and later) or
/// `ip4`/`ip6` (0.1.0, 0.2.0).
pub(crate) fn parse(value: &Value) -> Result<CniResult, String> {
    let obj = value.as_object().ok_or("the result is not a JSON object")?;
    let mut out = CniResult::default();
    if let Some(ifaces) = obj.get("interfaces") {
        for i in ifaces.as_array().ok_or("\"interfaces\" is not a list")? {
            let name = text(i, "name").ok_or("an interface has no name")?;
            let sandbox = text(i, "sandbox").unwrap_or_default();
            out.interfaces.push(ResultInterface {
                name: name.to_string(),
                sandbox: sandbox.to_string(),
            });
        }
    }
    if let Some(ips) = obj.get("ips") {
        for i in ips.as_array().ok_or("\"ips\" is not a list")? {
            let addr = text(i, "address").ok_or("an IP has no address")?;
            let (ip, prefix) = parse_cidr_addr(addr)?;
            let interface = match i.get("interface") {
                None | Some(Value::Null) => None,
                Some(v) => {
                    let idx = v.as_u64().ok_or("an IP's interface is not an index")? as usize;
                    if idx >= out.interfaces.len() {
                        return Err(format!(
                            "an IP names interface {idx}, which the result does not have"
                        ));
                    }
                    Some(idx)
                }
            };
            out.ips.push(ResultIp {
                ip,
                prefix,
                interface,
            });
        }
    }
    for key in ["ip4", "ip6"] {
        if let Some(v) = obj.get(key) {
            let addr = text(v, "ip").ok_or_else(|| format!("\"{key}\" has no ip"))?;
            let (ip, prefix) = parse_cidr_addr(addr)?;
            out.ips.push(ResultIp {
                ip,
                prefix,
                interface: None,
            });
        }
    }
    Ok(out)
}

/// The pod's addresses: those on the sandbox interface `ifname` (all addresses when the
/// result names no interfaces), IPv4 first as containerd orders them.
pub(crate) fn pod_ips(result: &CniResult, ifname: &str) -> Vec<IpAddr> {
    let on_pod_iface = |r: &ResultIp| match r.interface {
        Some(i) => {
            let iface = &result.interfaces[i];
            iface.name == ifname && !iface.sandbox.is_empty()
        }
        None => true,
    };
    let mut ips: Vec<IpAddr> = result
        .ips
        .iter()
        .filter(|r| on_pod_iface(r))
        .map(|r| r.ip)
        .collect();
    ips.sort_by_key(IpAddr::is_ipv6);
    ips.dedup();
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_bridge_result_and_picks_the_sandbox_interface() {
        let r = parse(&json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 2},
                {"address": "10.22.0.1/16", "interface": 0}
            ],
            "dns": {}
        }))
        .unwrap();
        assert_eq!(r.interfaces.len(), 3);
        let ips = pod_ips(&r, "eth0");
        assert_eq!(
            ips,
            vec![
                "10.22.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn parses_old_results() {
        let r =
            parse(&json!({"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.2/24","gateway":"10.1.0.1"}}))
                .unwrap();
        assert_eq!(
            pod_ips(&r, "eth0"),
            vec!["10.1.0.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn rejects_malformed_results() {
        for bad in [
            json!([]),
            json!({"ips": [{"address": "10.1.0.2"}]}),
            json!({"ips": [{"address": "x/24"}]}),
            json!({"ips": [{"address": "10.1.0.2/40"}]}),
            json!({"ips": [{"address": "10.1.0.2/24", "interface": 3}]}),
            json!({"interfaces": [{"mac": "x"}]}),
            json!({"ip4": {}}),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }
}
