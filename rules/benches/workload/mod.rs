//! The generated workload shared by the rules benchmark and the service benchmark
//! (`orchestrator/benches/service.rs` includes this file): SOC-like rules and ~1.4 KB OCSF
//! Detection Findings, deterministic so that runs are comparable.

#![allow(dead_code, reason = "each benchmark and test that includes the workload uses part of it")]

use std::fmt::Write as _;

/// How many ATT&CK technique ids the generator draws from.
pub const TECHNIQUES: u32 = 3_000;

/// A small deterministic generator (xorshift64*), so runs are comparable.
pub struct Random(pub u64);

impl Random {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u32) -> u32 {
        u32::try_from(self.next() % u64::from(n)).unwrap()
    }
}

pub fn technique(n: u32) -> String {
    format!("T{}", 1000 + n)
}

/// `count` rules of the kinds a SOC writes: most keyed on ATT&CK techniques with a process and a
/// lab filter, one in ten with a threshold, one in twenty with no technique (checked on every event).
pub fn rules_text(count: u32) -> String {
    generated_rules(count, plain_detection)
}

/// `rules_text(count)` with one rule in ten rewritten to use the Sigma features that cost the
/// most: keyword selections searched in every text of the event (one in twenty), `windash`,
/// `wide|base64offset`, `re|i`, `fieldref`, `cased|neq`. With `keyword_fields`, a policy.yaml
/// restricting keywords to the command line and the title (see [`SIGMA_POLICY`]).
pub fn sigma_rules_text(count: u32) -> String {
    generated_rules(count, |i| {
        let (a, b) = (technique(i * 2 % TECHNIQUES), technique((i * 2 + 1) % TECHNIQUES));
        match i % 20 {
            1 => format!(
                "  keywords:\n    - 'mimikatz{i}'\n    - 'sekurlsa::logonpasswords{i}'\n    - 'ws-00{i:02}.corp'\n  condition: keywords"
            ),
            5 | 15 => format!(
                "  selection:\n    finding_info.attacks.technique.uid: [{a}, {b}]\n  encoded:\n    \
                 process.cmd_line|windash|contains: [' -enc ', ' -encodedcommand ']\n  \
                 payload:\n    process.cmd_line|wide|base64offset|contains: ['IEX', 'Invoke-Expression']\n  \
                 condition: selection and encoded and payload"
            ),
            7 | 17 => format!(
                "  selection:\n    finding_info.attacks.technique.uid: [{a}, {b}]\n    \
                 process.name|re|i: '^power(shell|sh)\\.exe$'\n    actor.user.name|fieldref: process.user.name\n    \
                 process.name|cased|neq: cmd.exe\n  condition: selection"
            ),
            11 => format!("  keywords:\n    '|all': ['-WindowStyle Hidden', 'hidden{i}']\n  condition: keywords"),
            _ => plain_detection(i),
        }
    })
}

/// The `detection:` block of the `i`th plain rule.
fn plain_detection(i: u32) -> String {
    let (a, b) = (technique(i * 2 % TECHNIQUES), technique((i * 2 + 1) % TECHNIQUES));
    if i % 20 == 19 {
        format!("  selection:\n    severity_id|gte: 5\n    process.cmd_line|contains|all: [-enc, hidden{i}]\n  condition: selection")
    } else {
        format!(
            "  selection:\n    finding_info.attacks.technique.uid: [{a}, {b}]\n    severity_id|gte: 3\n  \
             tool:\n    process.name|endswith: [.exe, .dll, .ps1]\n  lab:\n    device.groups.name|contains: lab\n  \
             condition: selection and tool and not lab"
        )
    }
}

/// `count` rules with the detections `detection` writes, one in ten with a threshold.
fn generated_rules(count: u32, detection: impl Fn(u32) -> String) -> String {
    let mut text = String::new();
    for i in 0..count {
        let _ = writeln!(text, "---\nid: rule-{i}\ntitle: generated rule {i}\ndetection:\n{}", detection(i));
        if i % 10 == 3 {
            let _ = writeln!(text, "threshold: {{count: 3, within: 10m}}");
        }
        let _ = writeln!(text, "response:\n  isolate: {{mode: automatic, duration: 4h, allow_dns: true}}");
    }
    text
}

/// The policy.yaml that keeps [`sigma_rules_text`]'s keyword searches to two fields.
pub const SIGMA_POLICY: &str = "keyword_fields: [process.cmd_line, finding_info.title]\n";

/// The `i`th event of a run: an OCSF Detection Finding with two ATT&CK techniques drawn from
/// `techniques` ids (the rules name the first 200: more ids, fewer detections a rule matches),
/// on one of `hosts` hosts, at `time` (epoch ms), with id `finding-{i}`.
pub fn event_from(random: &mut Random, i: u64, hosts: u32, time: u64, techniques: u32) -> String {
    let host = random.below(hosts);
    let (t1, t2) = (technique(random.below(techniques)), technique(random.below(techniques)));
    let severity = 1 + random.below(6);
    format!(
        r#"{{"activity_id":1,"category_uid":2,"class_uid":2004,"class_name":"Detection Finding","type_uid":200401,"severity_id":{severity},"severity":"High","status_id":1,"time":{time},"metadata":{{"version":"1.3.0","product":{{"name":"Example EDR","vendor_name":"Example","version":"7.12.0"}},"log_name":"detections"}},"finding_info":{{"uid":"finding-{i:08}","title":"Suspicious script execution","desc":"A script interpreter was started with an encoded command line by a user process.","types":["Malware","Execution"],"attacks":[{{"tactic":{{"uid":"TA0002","name":"Execution"}},"technique":{{"uid":"{t1}","name":"Command and Scripting Interpreter"}}}},{{"tactic":{{"uid":"TA0005","name":"Defense Evasion"}},"technique":{{"uid":"{t2}","name":"Obfuscated Files or Information"}}}}]}},"device":{{"uid":"host-{host:04}","hostname":"ws-{host:04}.corp.example.com","ip":"10.1.{}.{}","type_id":2,"os":{{"name":"Windows","type_id":100,"version":"10.0.19045"}},"groups":[{{"name":"finance"}},{{"name":"workstations"}}]}},"process":{{"pid":{},"name":"powershell.exe","cmd_line":"powershell.exe -NoProfile -WindowStyle Hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAKQA=","path":"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe","user":{{"name":"bob","domain":"CORP"}},"parent_process":{{"pid":4100,"name":"explorer.exe"}}}},"actor":{{"user":{{"name":"bob","domain":"CORP","uid":"S-1-5-21-1004"}}}},"dst_endpoint":{{"ip":"203.0.113.{}","port":443}}}}"#,
        host / 250,
        host % 250,
        1000 + random.below(60_000),
        random.below(250)
    )
}
