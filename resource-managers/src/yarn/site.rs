//! Reading `yarn-site.xml`: the ResourceManager web addresses, with HA rm-ids and HTTPS policy.
//!
//! Hadoop configuration files are a flat list of `<property><name>…</name><value>…</value>
//! </property>` elements. This reader handles exactly that (plus comments, CDATA and the XML
//! character entities) without a general XML parser, and expands `${other.property}`
//! references the way Hadoop's `Configuration` does (system properties and environment
//! variables are not consulted).

use std::collections::BTreeMap;
use std::path::Path;

use super::error::YarnError;

/// The properties of one Hadoop `*-site.xml` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteConfig {
    properties: BTreeMap<String, String>,
}

/// Default web port of an RM over HTTP.
const DEFAULT_HTTP_PORT: u16 = 8088;
/// Default web port of an RM over HTTPS.
const DEFAULT_HTTPS_PORT: u16 = 8090;

impl SiteConfig {
    /// Reads `<hadoop_conf_dir>/yarn-site.xml`.
    pub fn load(hadoop_conf_dir: &Path) -> Result<SiteConfig, YarnError> {
        let path = hadoop_conf_dir.join("yarn-site.xml");
        let text = std::fs::read_to_string(&path).map_err(|e| YarnError::Site {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        SiteConfig::parse(&text).map_err(|message| YarnError::Site {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses the text of a site file.
    pub fn parse(text: &str) -> Result<SiteConfig, String> {
        let text = strip_comments(text)?;
        let mut properties = BTreeMap::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("<property") {
            let after = &rest[start + "<property".len()..];
            let Some(open_end) = after.find('>') else {
                return Err("unterminated <property> tag".into());
            };
            if after[..open_end].ends_with('/') {
                rest = &after[open_end + 1..];
                continue;
            }
            let body_start = open_end + 1;
            let Some(close) = after[body_start..].find("</property>") else {
                return Err("<property> without </property>".into());
            };
            let body = &after[body_start..body_start + close];
            rest = &after[body_start + close + "</property>".len()..];
            let Some(name) = element_text(body, "name")? else {
                continue;
            };
            let value = element_text(body, "value")?.unwrap_or_default();
            properties.insert(name.trim().to_owned(), value.trim().to_owned());
        }
        Ok(SiteConfig { properties })
    }

    /// Builds a config from name/value pairs (tests, embedding programs).
    pub fn from_pairs<I, K, V>(pairs: I) -> SiteConfig
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        SiteConfig {
            properties: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The raw value of a property (no `${}` expansion).
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    /// A property's value with `${name}` references expanded (up to 20 levels, like Hadoop).
    pub fn get(&self, name: &str) -> Option<String> {
        let mut value = self.raw(name)?.to_owned();
        for _ in 0..20 {
            let Some(start) = value.find("${") else {
                break;
            };
            let Some(len) = value[start..].find('}') else {
                break;
            };
            let var = &value[start + 2..start + len];
            let Some(sub) = self.raw(var) else {
                break;
            };
            value = format!("{}{}{}", &value[..start], sub, &value[start + len + 1..]);
        }
        Some(value)
    }

    /// Whether `yarn.http.policy` is `HTTPS_ONLY`.
    pub fn https_only(&self) -> bool {
        self.get("yarn.http.policy")
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("HTTPS_ONLY"))
    }

    /// The HA rm-ids (`yarn.resourcemanager.ha.rm-ids`), empty when HA is not configured.
    pub fn rm_ids(&self) -> Vec<String> {
        self.get("yarn.resourcemanager.ha.rm-ids")
            .map(|ids| {
                ids.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The RM web base URLs (`scheme://host:port`), in rm-id order for HA clusters.
    ///
    /// Per RM: `yarn.resourcemanager.webapp[.https].address[.<id>]`, falling back to
    /// `yarn.resourcemanager.hostname[.<id>]` with the default port (8088, or 8090 for HTTPS).
    pub fn rm_web_urls(&self) -> Result<Vec<String>, String> {
        let https = self.https_only();
        let (key, scheme, port) = if https {
            (
                "yarn.resourcemanager.webapp.https.address",
                "https",
                DEFAULT_HTTPS_PORT,
            )
        } else {
            (
                "yarn.resourcemanager.webapp.address",
                "http",
                DEFAULT_HTTP_PORT,
            )
        };
        let ids = self.rm_ids();
        let suffixes: Vec<String> = if ids.is_empty() {
            vec![String::new()]
        } else {
            ids.iter().map(|id| format!(".{id}")).collect()
        };
        let mut urls = Vec::with_capacity(suffixes.len());
        for suffix in &suffixes {
            let address = self
                .get(&format!("{key}{suffix}"))
                .filter(|a| !a.trim().is_empty())
                .or_else(|| {
                    self.get(&format!("yarn.resourcemanager.hostname{suffix}"))
                        .filter(|h| !h.trim().is_empty())
                        .map(|h| format!("{}:{port}", h.trim()))
                });
            let Some(address) = address else {
                return Err(format!(
                    "no {key}{suffix} or yarn.resourcemanager.hostname{suffix} in yarn-site.xml"
                ));
            };
            let address = address.trim();
            if address.contains("://") {
                urls.push(address.trim_end_matches('/').to_owned());
            } else {
                urls.push(format!("{scheme}://{address}"));
            }
        }
        Ok(urls)
    }

    /// `yarn.nodemanager.resource.memory-mb`, if set and numeric.
    pub fn nodemanager_memory_mb(&self) -> Option<u64> {
        self.get("yarn.nodemanager.resource.memory-mb")?
            .trim()
            .parse()
            .ok()
    }
}

/// Removes `<!-- ... -->` comments and the `<?...?>` declarations.
fn strip_comments(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next_comment = rest.find("<!--");
        let next_pi = rest.find("<?");
        let (start, open, close) = match (next_comment, next_pi) {
            (Some(c), Some(p)) if p < c => (p, "<?", "?>"),
            (Some(c), _) => (c, "<!--", "-->"),
            (None, Some(p)) => (p, "<?", "?>"),
            (None, None) => {
                out.push_str(rest);
                return Ok(out);
            }
        };
        out.push_str(&rest[..start]);
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(close) else {
            return Err(format!("unterminated {open}"));
        };
        rest = &after[end + close.len()..];
    }
}

/// The decoded text of the first `<tag>…</tag>` in `body`, if present.
fn element_text(body: &str, tag: &str) -> Result<Option<String>, String> {
    let open = format!("<{tag}");
    let mut search = body;
    let start = loop {
        let Some(pos) = search.find(&open) else {
            return Ok(None);
        };
        let after = &search[pos + open.len()..];
        // `<name>` or `<name attr>`, not `<names>`.
        if after.starts_with('>')
            || after.starts_with(char::is_whitespace)
            || after.starts_with('/')
        {
            break after;
        }
        search = after;
    };
    let Some(gt) = start.find('>') else {
        return Err(format!("unterminated <{tag}> tag"));
    };
    if start[..gt].ends_with('/') {
        return Ok(Some(String::new()));
    }
    let inner = &start[gt + 1..];
    let close = format!("</{tag}>");
    let Some(end) = inner.find(&close) else {
        return Err(format!("<{tag}> without {close}"));
    };
    decode_text(&inner[..end]).map(Some)
}

/// Decodes CDATA sections and character entities.
fn decode_text(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find(['&', '<']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(cdata) = tail.strip_prefix("<![CDATA[") {
            let Some(end) = cdata.find("]]>") else {
                return Err("unterminated CDATA".into());
            };
            out.push_str(&cdata[..end]);
            rest = &cdata[end + 3..];
        } else if tail.starts_with('<') {
            return Err("unexpected element inside a text value".into());
        } else {
            let Some(semi) = tail.find(';') else {
                return Err("unterminated character reference".into());
            };
            let entity = &tail[1..semi];
            let decoded = match entity {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let code = if let Some(hex) = entity
                        .strip_prefix("#x")
                        .or_else(|| entity.strip_prefix("#X"))
                    {
                        u32::from_str_radix(hex, 16).ok()
                    } else if let Some(dec) = entity.strip_prefix('#') {
                        dec.parse().ok()
                    } else {
                        None
                    };
                    code.and_then(char::from_u32)
                        .ok_or_else(|| format!("unknown character reference &{entity};"))?
                }
            };
            out.push(decoded);
            rest = &tail[semi + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HA: &str = r#"<?xml version="1.0"?>
<?xml-stylesheet type="text/xsl" href="configuration.xsl"?>
<configuration>
  <!-- <property><name>yarn.http.policy</name><value>HTTPS_ONLY</value></property> -->
  <property>
    <name>yarn.resourcemanager.ha.rm-ids</name>
    <value> rm1 , rm2 </value>
  </property>
  <property><name>yarn.resourcemanager.hostname.rm1</name><value>master1</value></property>
  <property>
    <name>yarn.resourcemanager.webapp.address.rm1</name>
    <value>${yarn.resourcemanager.hostname.rm1}:18088</value>
    <description>uses &lt;host&gt;:port</description>
  </property>
  <property><name>yarn.resourcemanager.hostname.rm2</name><value>master2</value></property>
  <property><name>yarn.nodemanager.resource.memory-mb</name><value>8192</value></property>
  <property><name>odd</name><value><![CDATA[a<b]]>&amp;&#65;</value></property>
  <property/>
</configuration>"#;

    #[track_caller]
    fn check(xml: &str, expected: Result<Vec<&str>, &str>) {
        let got = SiteConfig::parse(xml).and_then(|c| c.rm_web_urls());
        match expected {
            Ok(urls) => assert_eq!(got, Ok(urls.into_iter().map(String::from).collect())),
            Err(fragment) => {
                let err = got.expect_err("expected an error");
                assert!(err.contains(fragment), "{err}");
            }
        }
    }

    #[test]
    fn rm_web_urls_cases() {
        check(HA, Ok(vec!["http://master1:18088", "http://master2:8088"]));
        check(
            "<configuration><property><name>yarn.resourcemanager.webapp.address</name>\
             <value>rm:8088</value></property></configuration>",
            Ok(vec!["http://rm:8088"]),
        );
        check(
            "<configuration>\
             <property><name>yarn.http.policy</name><value>HTTPS_ONLY</value></property>\
             <property><name>yarn.resourcemanager.ha.rm-ids</name><value>a,b</value></property>\
             <property><name>yarn.resourcemanager.webapp.https.address.a</name><value>h1:9090</value></property>\
             <property><name>yarn.resourcemanager.hostname.b</name><value>h2</value></property>\
             </configuration>",
            Ok(vec!["https://h1:9090", "https://h2:8090"]),
        );
        check(
            "<configuration></configuration>",
            Err("no yarn.resourcemanager.webapp.address"),
        );
        check(
            "<configuration><property><name>x</name>",
            Err("without </property>"),
        );
        check("<configuration><!-- open", Err("unterminated <!--"));
    }

    #[test]
    fn values_are_decoded() {
        let conf = SiteConfig::parse(HA).expect("parse");
        assert_eq!(conf.get("odd").as_deref(), Some("a<b&A"));
        assert_eq!(conf.rm_ids(), vec!["rm1", "rm2"]);
        assert_eq!(conf.nodemanager_memory_mb(), Some(8192));
        assert!(!conf.https_only());
    }
}
