//! The site configurations of `site-configs/`, embedded in the binary so that
//! `hpfaas endpoint configure NAME --site SITE` works wherever the binary is
//! installed, without the repository.

/// One shipped site configuration.
#[derive(Debug)]
pub struct Site {
    /// Its name, the file's name without `.toml`.
    pub name: &'static str,
    /// The file as shipped.
    pub text: &'static str,
}

macro_rules! sites {
    ($($name:literal),* $(,)?) => {
        &[$(Site {
            name: $name,
            text: include_str!(concat!("../../../site-configs/", $name, ".toml")),
        }),*]
    };
}

/// Every shipped site configuration, by name.
pub const SITES: &[Site] = sites!(
    "laptop",
    "lsf-summit",
    "pbs-polaris",
    "slurm-cpu",
    "slurm-gpu",
    "slurm-test",
);

impl Site {
    /// What the site is: the file's first comment line.
    pub fn summary(&self) -> &'static str {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix('#'))
            .map_or("", str::trim)
    }

    /// The file for an endpoint: with `service_url` set to `url` when given
    /// (the shipped files leave it commented, so `$HPFAAS_URL` applies).
    pub fn text_for(&self, url: Option<&str>) -> String {
        let Some(url) = url else {
            return self.text.to_string();
        };
        let setting = format!("service_url = {}", toml::Value::String(url.to_string()));
        let mut done = false;
        let mut out = String::with_capacity(self.text.len() + setting.len());
        for line in self.text.lines() {
            if !done && line.starts_with("# service_url = ") {
                out.push_str(&setting);
                done = true;
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        out
    }
}

/// The site called `name`, or an error naming the known ones.
pub fn find(name: &str) -> Result<&'static Site, String> {
    SITES.iter().find(|s| s.name == name).ok_or_else(|| {
        format!(
            "unknown site {name:?}; known sites: {} (`--site list` describes them)",
            SITES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to `site-configs/` without being embedded here fails.
    #[test]
    fn every_file_of_site_configs_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../site-configs");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let path = e.unwrap().path();
                (path.extension()? == "toml")
                    .then(|| path.file_stem()?.to_str().map(str::to_string))?
            })
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = SITES.iter().map(|s| s.name).collect();
        assert_eq!(on_disk, embedded);
        for site in SITES {
            assert!(!site.summary().is_empty(), "{} has no summary", site.name);
        }
    }

    #[test]
    fn the_service_url_is_filled_in_when_known() {
        for site in SITES {
            assert!(
                site.text.lines().any(|l| l.starts_with("# service_url = ")),
                "{}: service_url must stay commented so $HPFAAS_URL applies",
                site.name
            );
            let config =
                crate::config::EndpointConfig::parse(&site.text_for(Some("http://h:1"))).unwrap();
            assert_eq!(config.endpoint.service_url.as_deref(), Some("http://h:1"));
            let config = crate::config::EndpointConfig::parse(&site.text_for(None)).unwrap();
            assert_eq!(config.endpoint.service_url, None);
        }
    }

    #[test]
    fn an_unknown_site_names_the_known_ones() {
        let err = find("cray").unwrap_err();
        assert!(
            err.contains("\"cray\"") && err.contains("slurm-cpu"),
            "{err}"
        );
        assert_eq!(find("laptop").unwrap().name, "laptop");
    }
}
