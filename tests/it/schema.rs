//! The published JSON Schema: every example file validates against it, it refuses what the
//! loader refuses, and the copy in examples-repo (which editors use) is current.

use std::path::PathBuf;

use expect_test::expect_file;

fn schema() -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("schema")
        .output()
        .expect("run drover schema");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("schema is JSON")
}

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples-repo/clusters");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn yaml_to_json(path: &PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

#[test]
fn every_example_validates_against_the_schema() {
    let validator = jsonschema::validator_for(&schema()).expect("schema compiles");
    let files = examples();
    assert!(files.len() >= 2, "examples found: {files:?}");
    for file in files {
        let doc = yaml_to_json(&file);
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
    }
}

#[test]
fn the_schema_refuses_unknown_fields_and_bad_names() {
    let validator = jsonschema::validator_for(&schema()).expect("schema compiles");
    let mut doc = yaml_to_json(&examples()[0]);
    assert!(validator.is_valid(&doc));
    doc["spec"]["nodes"][0]["adress"] = "127.0.0.2".into();
    assert!(!validator.is_valid(&doc), "unknown field accepted");
    let mut doc = yaml_to_json(&examples()[0]);
    doc["metadata"]["name"] = "Not_A_Label".into();
    assert!(!validator.is_valid(&doc), "bad name accepted");
    let mut doc = yaml_to_json(&examples()[0]);
    doc["spec"]["nodes"][0]["roles"] = serde_json::json!(["master"]);
    assert!(!validator.is_valid(&doc), "unknown role accepted");
}

/// Editors read examples-repo/schema/cluster.schema.json; refresh it with UPDATE_EXPECT=1.
#[test]
fn the_committed_schema_is_current() {
    let text = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
    // An absolute path: expect-test's guess at the workspace root climbs to the topmost
    // Cargo.toml above the checkout, which need not be this repository's.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples-repo/schema/cluster.schema.json"
    );
    expect_file![path].assert_eq(&text);
}
