//! Generated estates: the shipped example bundle plus N copies of its
//! orders app, each with a contract of its own (a distinct file, as each
//! exported app has), and optionally a file of many consumers.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

/// The file a one-file edit changes: one generated app's.
pub const EDITED_APP: &str = "apps/gen/orders-0000.yaml";

/// The document every generated contract refers to: editing it makes
/// every app compile again (the slowest reload there is).
pub const SHARED_DOCUMENT: &str = "contracts/common.yaml";

/// Write an estate of `apps` generated apps (and `consumers` generated
/// consumers, one API key each) into `dir`, from the example bundle in
/// `policies`.
pub fn generate(policies: &Path, dir: &Path, apps: usize, consumers: usize) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    copy_dir(policies, dir).context("copying the example bundle")?;
    let app = std::fs::read_to_string(policies.join("apps/orders.yaml"))?;
    let contract = std::fs::read_to_string(policies.join("contracts/orders.openapi.yaml"))?;
    std::fs::create_dir_all(dir.join("apps/gen"))?;
    std::fs::create_dir_all(dir.join("contracts/gen"))?;
    for i in 0..apps {
        let name = format!("orders-{i:04}");
        let text = app
            .replace("name: orders", &format!("name: {name}"))
            .replace("orders.corp.example", &format!("{name}.corp.example"))
            .replace(
                "contracts/orders.openapi.yaml",
                &format!("contracts/gen/{name}.openapi.yaml"),
            );
        std::fs::write(dir.join(format!("apps/gen/{name}.yaml")), text)?;
        let own = contract
            .replace("common.yaml#", "../common.yaml#")
            .replacen("title:", &format!("title: Orders {i:04} -"), 1);
        std::fs::write(dir.join(format!("contracts/gen/{name}.openapi.yaml")), own)?;
    }
    if consumers > 0 {
        write_consumers(&dir.join("consumers-bulk.json"), consumers)?;
    }
    Ok(())
}

/// `n` consumers on the `bronze` plan, one key each (a digest of a number,
/// not a real key), as one JSON policy file.
fn write_consumers(path: &Path, n: usize) -> anyhow::Result<()> {
    let mut out = String::with_capacity(n * 220);
    out.push_str("{\"version\": 1, \"consumers\": [\n");
    for i in 0..n {
        let sep = if i + 1 < n { "," } else { "" };
        let _ = writeln!(
            out,
            "{{\"id\": \"c{i:07}\", \"name\": \"Consumer {i}\", \"plan\": \"bronze\", \"apps\": [\"orders\", \"customers\"], \"keys\": [{{\"hash\": \"sha256:{:064x}\", \"label\": \"initial\"}}]}}{sep}",
            (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
        );
    }
    out.push_str("]}\n");
    std::fs::write(path, out)?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Change one limit of the edited app (`n` distinguishes successive
/// edits): a one-line change of one file.
pub fn edit_app(dir: &Path, n: u32) -> anyhow::Result<()> {
    let path = dir.join(EDITED_APP);
    let text = std::fs::read_to_string(&path)?;
    const AT: &str = "rate: 10/s, burst: ";
    let Some(at) = text.find(AT).map(|a| a + AT.len()) else {
        anyhow::bail!("{EDITED_APP} has no `{AT}` to edit");
    };
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    let edited = format!("{}{}{}", &text[..at], 20 + n, &text[at + digits..]);
    std::fs::write(path, edited)?;
    Ok(())
}

/// Change the document every app refers to (`n` distinguishes edits).
pub fn edit_shared(dir: &Path, n: u32) -> anyhow::Result<()> {
    let path = dir.join(SHARED_DOCUMENT);
    let text = std::fs::read_to_string(&path)?;
    let edited = text.replacen("maximum: 500,", &format!("maximum: {},", 500 + n), 1);
    anyhow::ensure!(
        edited != text,
        "{SHARED_DOCUMENT} has no `maximum: 500,` to edit"
    );
    std::fs::write(path, edited)?;
    Ok(())
}
