//! Fuzz target: the configuration loader over a server file, a crossroads `sites.yml` and environment variables,
//! then validation and `check-config`'s rendering. The input is `server file \0 sites file \0 environment`, the
//! environment one `NAME=value` per line; an empty (or absent) part is a source not given.
#![no_main]

use std::collections::BTreeMap;

use herald::config::{render_masked, validate};
use herald::fuzzing::load_config;
use libfuzzer_sys::fuzz_target;

fn given(part: Option<&str>) -> Option<&str> {
    part.filter(|text| !text.is_empty())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let (server, sites) = (given(parts.next()), given(parts.next()));
    let env: BTreeMap<String, String> = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();

    let config = match load_config(server, sites, env) {
        Ok(config) => config,
        Err(error) => {
            // Errors are one line (`ConfigError`'s promise).
            let message = error.to_string();
            assert!(!message.contains('\n'), "{message:?}");
            return;
        }
    };
    validate(&config).unwrap();
    assert!(!config.sites.is_empty(), "no site: the demo is the default");

    // `check-config`'s output is a server file that loads again, with the same server settings (the Redis URL's
    // password masked) and the same sites.
    let rendered = render_masked(&config);
    let reloaded = load_config(Some(&rendered), None, BTreeMap::new())
        .unwrap_or_else(|e| panic!("check-config output does not load: {e}\n{rendered}"));
    let (mut server, mut server_again) = (config.server.clone(), reloaded.server.clone());
    assert_eq!(server.redis_url.is_some(), server_again.redis_url.is_some());
    (server.redis_url, server_again.redis_url) = (None, None);
    assert_eq!(server, server_again, "{rendered}");
    let names = |c: &herald::config::Config| -> Vec<String> {
        c.sites.iter().map(|s| s.name.clone()).collect()
    };
    assert_eq!(names(&config), names(&reloaded), "{rendered}");
});
