//! Reading the deployment files for `deploy/main.rs`: YAML with merge keys and dotted paths, the Dockerfile's
//! stages and instructions, haproxy.cfg's sections, Compose's interpolation, and the Kubernetes resources that
//! kustomization.yaml lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use herald::config::ENVIRONMENT;
use serde::Deserialize;
use serde_yaml_ng::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn yaml(path: &str) -> Value {
    let mut value: Value =
        serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{path}: merge keys: {e}"));
    value
}

/// `value` at a dotted path (`spec.template.spec`, numbers index sequences); `Null` when absent.
pub fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(value, |v, key| match key.parse::<usize>() {
            Ok(index) => &v[index],
            Err(_) => &v[key],
        })
}

pub fn text<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {:?}", at(value, path)))
}

pub fn number(value: &Value, path: &str) -> u64 {
    at(value, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a whole number: {:?}", at(value, path)))
}

/// A scalar as the text a container's environment gets.
pub fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `90s`, `1h`, `250ms` in milliseconds.
pub fn duration_ms(text: &str) -> u64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (amount, unit) = text.split_at(split);
    let amount: u64 = amount.parse().unwrap_or_else(|_| panic!("duration {text}"));
    amount
        * match unit {
            "ms" => 1,
            "s" | "" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => panic!("duration unit in {text}"),
        }
}

/// Every variable name herald reads, from the list it documents.
pub fn herald_vars() -> BTreeSet<&'static str> {
    ENVIRONMENT.iter().map(|(name, _)| *name).collect()
}

/// Asserts that every variable set for herald is one herald reads, except those only used to build another's
/// value (`$(POD_IP)` in Kubernetes).
pub fn assert_herald_reads(env: &BTreeMap<String, String>, context: &str) {
    let known = herald_vars();
    for name in env.keys() {
        let helper = env.values().any(|v| v.contains(&format!("$({name})")));
        assert!(
            known.contains(name.as_str()) || helper,
            "{context}: herald reads no variable {name}"
        );
    }
}

/// The port of a `host:port` or `0.0.0.0:3000` address.
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}
// -------------------------------------------------------------------------------------------------------------
// Dockerfile
// -------------------------------------------------------------------------------------------------------------

/// One `FROM` stage: its base image, its name and its instructions (keyword in capitals, arguments).
#[derive(Debug)]
pub struct Stage {
    pub base: String,
    pub name: Option<String>,
    pub instructions: Vec<(String, String)>,
}

impl Stage {
    pub fn all(&self, keyword: &str) -> Vec<&str> {
        (self.instructions.iter())
            .filter(|(k, _)| k == keyword)
            .map(|(_, args)| args.as_str())
            .collect()
    }

    pub fn one(&self, keyword: &str) -> &str {
        match self.all(keyword).as_slice() {
            [one] => one,
            found => panic!(
                "expected one {keyword} in stage {:?}, found {found:?}",
                self.name
            ),
        }
    }

    /// The stage's `ENV` variables (`ENV A=1 B=2`, possibly over several lines).
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for args in self.all("ENV") {
            for pair in args.split_whitespace() {
                let (name, value) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("ENV {args}: write NAME=value"));
                env.insert(name.to_string(), value.trim_matches('"').to_string());
            }
        }
        env
    }
}

/// The Dockerfile's stages: comments dropped, continuation lines joined.
pub fn dockerfile() -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(' ').unwrap_or((&line, ""));
        let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_string());
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            stages.push(Stage {
                base: words[0].to_string(),
                name: match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                    _ => None,
                },
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("FROM comes first")
                .instructions
                .push((keyword, args));
        }
    }
    stages
}

/// The build stage (the first) and the runtime stage (the last).
pub fn build_and_runtime() -> (Stage, Stage) {
    let mut stages = dockerfile();
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    let runtime = stages.pop().expect("a last stage");
    (stages.swap_remove(0), runtime)
}

/// An exec-form command (`["a", "b"]`).
pub fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not an exec-form array: {args}: {e}"))
}

/// HEALTHCHECK's options (`--timeout` → `5s`) and its command.
pub fn healthcheck(runtime: &Stage) -> (BTreeMap<String, String>, Vec<String>) {
    let args = runtime.one("HEALTHCHECK");
    let (options, command) = args
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("HEALTHCHECK {args}: CMD in exec form"));
    let options = (options.split_whitespace())
        .filter_map(|o| o.strip_prefix("--")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (options, exec_form(command.trim()))
}

/// README.md's command that runs herald (`cargo run …`), as words.
pub fn readme_run_command() -> Vec<String> {
    let readme = read("README.md");
    let line = (readme.lines())
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| l.starts_with("cargo run"))
        .expect("README.md shows a `cargo run` command");
    line.split_whitespace().map(String::from).collect()
}

/// The workspace's minimum Rust version (`rust-version = "1.90"`), as (major, minor).
pub fn workspace_rust_version() -> (u32, u32) {
    let manifest = read("Cargo.toml");
    let line = (manifest.lines())
        .find(|l| l.trim_start().starts_with("rust-version"))
        .expect("Cargo.toml sets rust-version");
    let version = line.split('"').nth(1).expect("a quoted version");
    parse_version(version)
}

pub fn parse_version(text: &str) -> (u32, u32) {
    let mut parts = text.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("not a version: {text}"),
    }
}
// -------------------------------------------------------------------------------------------------------------
// deploy/compose.yml and deploy/haproxy.cfg
// -------------------------------------------------------------------------------------------------------------

/// `${NAME:?message}` and `${NAME}` replaced from `vars`, as Compose interpolates.
pub fn interpolate(text: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closing brace") + start;
        let name = rest[start + 2..end]
            .split([':', '-', '?'])
            .next()
            .expect("a name");
        out.push_str(
            vars.get(name)
                .unwrap_or_else(|| panic!("no value for ${{{name}}}")),
        );
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// haproxy.cfg's sections (`backend herald` → its lines), comments dropped.
pub fn haproxy() -> BTreeMap<String, Vec<String>> {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in read("deploy/haproxy.cfg").lines() {
        let content = line.split('#').next().unwrap_or("");
        if content.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            current = content.trim().to_string();
            sections.entry(current.clone()).or_default();
        } else {
            sections
                .entry(current.clone())
                .or_default()
                .push(content.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    sections
}
// -------------------------------------------------------------------------------------------------------------
// deploy/kubernetes
// -------------------------------------------------------------------------------------------------------------

/// The resources kustomization.yaml lists, by kind.
pub fn kubernetes() -> BTreeMap<String, Value> {
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let mut resources = BTreeMap::new();
    for file in at(&kustomization, "resources")
        .as_sequence()
        .expect("resources")
    {
        let file = file.as_str().expect("a file name");
        let path = format!("deploy/kubernetes/{file}");
        for document in serde_yaml_ng::Deserializer::from_str(&read(&path)) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}"));
            let kind = text(&value, "kind").to_string();
            assert!(
                resources.insert(kind.clone(), value).is_none(),
                "two of {kind}"
            );
        }
    }
    resources
}
