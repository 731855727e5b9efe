//! The machines file format of `baton machine apply` (see `examples/machines.toml`):
//! `[[machine]]` tables, each with `[[machine.transition]]` and `[[machine.field_rule]]`.
//! The file only carries specs; the server validates them.

use baton::domain::machine::MachineSpec;

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    machine: Vec<MachineSpec>,
}

/// Parses a machines file.
pub fn parse(text: &str) -> Result<Vec<MachineSpec>, String> {
    toml::from_str::<File>(text)
        .map(|f| f.machine)
        .map_err(|e| e.to_string())
}

/// One spec as a machines file.
pub fn render(spec: MachineSpec) -> String {
    toml::to_string(&File { machine: vec![spec] }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_renders_back() {
        let text = include_str!("../../../examples/machines.toml");
        let specs = parse(text).unwrap();
        assert_eq!(specs.len(), 4);
        for spec in specs {
            assert_eq!(parse(&render(spec.clone())).unwrap(), vec![spec]);
        }
        assert!(parse("[[machine]]\nkind = 1").is_err());
    }
}
