//! The line of each object and of each bad field, in the YAML shapes a plain reader trips on:
//! multi-document files, flow style, block scalars, anchors, comments, CRLF, a byte-order
//! mark, Lists, JSON. The expected lines were taken from the loader of before the single YAML
//! path (serde_yaml for values, yaml-rust2 for lines) and checked by eye: they pin behaviour.

use engine::load::{parse_file, Object, SourceFile};

/// What a file yields, one line each: every object with the line it starts on (and the line
/// of an explicit VIP), then every diagnostic as `check` prints it.
fn report(path: &str, text: &str) -> Vec<String> {
    let parsed = parse_file(&SourceFile {
        path: path.into(),
        text: text.into(),
    });
    let mut out = Vec::new();
    for object in &parsed.objects {
        out.push(match object {
            Object::Service(s) => format!(
                "Service {}/{} at {:?}{}",
                s.key.namespace,
                s.key.name,
                s.source.line,
                s.vip_at
                    .as_ref()
                    .map(|at| format!(", {} at {:?}", at.field, at.line))
                    .unwrap_or_default()
            ),
            Object::Endpoints(e) => format!("{} at {:?}", e.object, e.source.line),
            Object::Pod(p) => format!(
                "Pod {}/{} at {:?}",
                p.key.namespace, p.key.name, p.source.line
            ),
        });
    }
    out.extend(parsed.diagnostics.iter().map(ToString::to_string));
    out
}

fn assert_report(path: &str, text: &str, expected: &[&str]) {
    let got = report(path, text);
    assert_eq!(got, expected, "{path}:\n{text}\ngot:\n{}", got.join("\n"));
}

#[test]
fn objects_and_bad_fields_of_a_multi_document_file_keep_their_lines() {
    let text = "\
# three services, one empty document
apiVersion: v1
kind: Service
metadata:
  name: a
spec:
  clusterIP: 10.11.0.7
  ports:
  - port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: b
spec:
  ports:
  - port: 99999
---

---
# a comment first
kind: Service
apiVersion: v1
metadata: {name: c}
spec:
  ports:
  - {port: 81, protocol: SCTP}
...
---   # explicit end above, comment here
apiVersion: v1
kind: Service
metadata:
  name: d
spec:
  ports:
  - port: 82
    tragetPort: 8082
";
    assert_report(
        "multi.yaml",
        text,
        &[
            "Service default/a at Some(2), spec.clusterIP at Some(7)",
            "Service default/d at Some(29)",
            "multi.yaml:17: error: Service `default/b`: `spec.ports[0].port`: port 99999 is out of range 1-65535",
            "multi.yaml:27: error: Service `default/c`: `spec.ports[0].protocol`: protocol SCTP is not supported (TCP or UDP)",
            "multi.yaml:37: warning: Service `default/d`: `spec.ports[0].tragetPort`: unknown field; ignored (did you mean `targetPort`?)",
        ],
    );
}

#[test]
fn flow_style_objects_and_fields_keep_their_lines() {
    let text = "\
{apiVersion: v1, kind: Service,
 metadata: {name: web, labels: {app: web}},
 spec: {clusterIP: 10.11.0.9, ports: [{port: 80, name: a}, {name: b,
   port: 70000}], selector: {app: web}}}
---
[1, 2]
--- {apiVersion: v1, kind: Service, metadata: {name: api},
  spec: {ports: [{port: 80, protocol: TCP, name: y},
    {port: 81, name: x, protocl: UDP}]}}
";
    assert_report(
        "flow.yaml",
        text,
        &[
            "Service default/api at Some(7)",
            "flow.yaml:4: error: Service `default/web`: `spec.ports[1].port`: port 70000 is out of range 1-65535",
            "flow.yaml:5: error: expected an object (a mapping with `kind`)",
            "flow.yaml:9: warning: Service `default/api`: `spec.ports[1].protocl`: unknown field; ignored (did you mean `protocol`?)",
        ],
    );
}

#[test]
fn block_scalars_do_not_shift_the_lines_after_them() {
    let text = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    note: |
      ports:
      - port: 1
      ---
      kind: Pod
    other: >-
      folded
        more

    keep: |+
      kept

    indented: |2
        two more
spec:
  ports:
  - port: 80
    protocol: SCTP
---
apiVersion: v1
kind: Service
metadata:
  name: api
  annotations: {a: b}
spec:
  ports:
  - port: |
      80
";
    assert_report(
        "block.yaml",
        text,
        &[
            "block.yaml:23: error: Service `default/web`: `spec.ports[0].protocol`: protocol SCTP is not supported (TCP or UDP)",
            "block.yaml:32: error: Service `default/api`: `spec.ports[0].port`: expected a whole number, found the string \"80\\n\"",
        ],
    );
}

#[test]
fn anchors_aliases_and_tags_keep_their_lines() {
    let text = "\
apiVersion: v1
kind: Service
metadata:
  name: &name web
  labels: &labels
    app: web
spec:
  selector: *labels
  clusterIP: !!str 10.11.0.3
  ports:
  - &first
    port: 80
  - name: *name
    port: !!int 99999
---
&doc
apiVersion: v1
kind: Service
metadata: {name: &n api}
spec:
  ports:
  - &first {port: 80}
  - port: 81
    protocol: &p SCTP
--- !!map
apiVersion: v1
kind: Service
metadata:
  name: &n db
spec:
  ports: [&x {port: 5432}]
  sessionAffinity: *n
";
    assert_report(
        "anchors.yaml",
        text,
        &[
            "anchors.yaml:12: error: Service `default/web`: `spec.ports[0].name`: every port of a multi-port service needs a name",
            "anchors.yaml:14: error: Service `default/web`: `spec.ports[1].port`: port 99999 is out of range 1-65535",
            "anchors.yaml:22: error: Service `default/api`: `spec.ports[0].name`: every port of a multi-port service needs a name",
            "anchors.yaml:23: error: Service `default/api`: `spec.ports[1].name`: every port of a multi-port service needs a name",
            "anchors.yaml:24: error: Service `default/api`: `spec.ports[1].protocol`: protocol SCTP is not supported (TCP or UDP)",
            "anchors.yaml:32: error: Service `default/db`: `spec.sessionAffinity`: `db` is not `None` or `ClientIP`",
        ],
    );
}

#[test]
fn comments_and_quoted_text_that_look_like_structure_do_not_move_lines() {
    let text = "\
# kind: Pod
#---
apiVersion: v1 # trailing
kind: \"Service\"
metadata:
  # name: wrong
  name: 'web' # the name
  annotations:
    \"quoted: key\": \"a # not a comment\"
    'single': 'it''s
      two lines'
    plain: first line
      second line
      third line, still the same plain scalar
    \"multi\": \"one
      two\"
spec:
    # ports:
    ports:
      # - port: 1
      -   port: 80
          # a comment between fields
          protocol: SCTP
      -

          port: 443
          nme: https
";
    assert_report(
        "comments.yaml",
        text,
        &[
            "comments.yaml:21: error: Service `default/web`: `spec.ports[0].name`: every port of a multi-port service needs a name",
            "comments.yaml:23: error: Service `default/web`: `spec.ports[0].protocol`: protocol SCTP is not supported (TCP or UDP)",
            "comments.yaml:26: error: Service `default/web`: `spec.ports[1].name`: every port of a multi-port service needs a name",
            "comments.yaml:27: warning: Service `default/web`: `spec.ports[1].nme`: unknown field; ignored (did you mean `name`?)",
        ],
    );
}

#[test]
fn crlf_line_ends_keep_their_lines() {
    let text = "apiVersion: v1\r\nkind: Service\r\nmetadata:\r\n  name: web\r\nspec:\r\n  clusterIP: 10.11.0.4\r\n  ports:\r\n  - port: 80\r\n    name: a\r\n  - port: 99999\r\n    name: b\r\n---\r\n\r\napiVersion: v1\r\nkind: Service\r\nmetadata: {name: api}\r\nspec:\r\n  ports:\r\n  - port: 80\r\n    protocol: SCTP\r\n";
    assert_report(
        "crlf.yaml",
        text,
        &[
            "crlf.yaml:10: error: Service `default/web`: `spec.ports[1].port`: port 99999 is out of range 1-65535",
            "crlf.yaml:20: error: Service `default/api`: `spec.ports[0].protocol`: protocol SCTP is not supported (TCP or UDP)",
        ],
    );
    let good = text.replace("99999", "81").replace("SCTP", "UDP");
    assert_report(
        "crlf.yaml",
        &good,
        &[
            "Service default/web at Some(1), spec.clusterIP at Some(6)",
            "Service default/api at Some(12)",
        ],
    );
}

#[test]
fn a_byte_order_mark_moves_no_line() {
    let text = "\u{feff}# first line\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n    protocol: SCTP\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: api\nspec:\n  clusterIP: 10.11.0.5\n  ports:\n  - port: 80\n";
    assert_report(
        "bom.yaml",
        text,
        &[
            "Service default/api at Some(10), spec.clusterIP at Some(16)",
            "bom.yaml:9: error: Service `default/web`: `spec.ports[0].protocol`: protocol SCTP is not supported (TCP or UDP)",
        ],
    );
    let json = "\u{feff}{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Service\",\n  \"metadata\": {\"name\": \"web\"},\n  \"spec\": {\n    \"ports\": [\n      {\"port\": 80, \"protocol\": \"SCTP\"}\n    ]\n  }\n}\n";
    assert_report(
        "bom.json",
        json,
        &["bom.json:7: error: Service `default/web`: `spec.ports[0].protocol`: protocol SCTP is not supported (TCP or UDP)"],
    );
}

#[test]
fn items_of_a_list_and_json_objects_keep_their_lines() {
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: web
  spec:
    ports:
    - port: 80
-
  apiVersion: v1
  kind: Endpoints
  metadata:
    name: web
  subsets:
  - addresses:
    - ip: 10.1.0.1
    - ip: 10.1.0.300
    ports:
    - port: 8080
- {apiVersion: v1, kind: Pod, metadata: {name: p, labels: {app: x}},
   status: {podIP: 10.1.0.2}}
";
    assert_report(
        "list.yaml",
        text,
        &[
            "Service default/web at Some(4)",
            "Pod default/p at Some(22)",
            "list.yaml:19: error: Endpoints `default/web`: `subsets[0].addresses[1].ip`: `10.1.0.300` is not an IP address",
        ],
    );
    let json = "\
{
  \"kind\": \"List\", \"apiVersion\": \"v1\",
  \"items\": [
    {
      \"apiVersion\": \"v1\", \"kind\": \"Service\",
      \"metadata\": {\"name\": \"web\", \"namespace\": \"prod\"},
      \"spec\": {\"clusterIP\": \"10.11.0.6\", \"ports\": [{\"port\": 80}]}
    },
    {\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"api\"},
     \"spec\": {\"ports\": [{\"port\": 80,
                          \"targetPort\": \"no such name!\"}]}}
  ]
}
";
    assert_report(
        "list.json",
        json,
        &[
            "Service prod/web at Some(4), spec.clusterIP at Some(7)",
            "list.json:11: error: Service `default/api`: `spec.ports[0].targetPort`: `no such name!` is not a valid port name: only lower-case letters, digits and `-` are allowed",
        ],
    );
}

#[test]
fn directives_explicit_keys_and_odd_documents_keep_their_lines() {
    let text = "\
%YAML 1.2
---
apiVersion: v1
kind: Service
metadata:
  name: web
? spec
: ports:
  - port: 80
    name: a
  - port: 0
    name: b
...
%YAML 1.2
---
\"apiVersion\": v1
'kind': Service
metadata:
  name: api
spec:
  ports:
  -  port: 80
     ? protocol
     : SCTP
";
    assert_report(
        "odd.yaml",
        text,
        &[
            "odd.yaml:11: error: Service `default/web`: `spec.ports[1].port`: port 0 is out of range 1-65535",
            "odd.yaml:23: error: Service `default/api`: `spec.ports[0].protocol`: protocol SCTP is not supported (TCP or UDP)",
        ],
    );
}

/// Lines taken from the `portald check` of before the single YAML path.
#[test]
fn a_block_scalar_item_is_on_its_first_line_of_text_and_a_lone_cr_ends_a_line() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n  externalIPs:\n  - 10.0.0.1\n  - |\n\n    10.0.0.x\n  - >-\n    10.0.0.y\n  - \"10.0.0.z\"\n";
    assert_report(
        "block-items.yaml",
        text,
        &[
            "block-items.yaml:12: error: Service `default/web`: `spec.externalIPs[1]`: `\\n10.0.0.x\\n` is not an IPv4 address",
            "block-items.yaml:14: error: Service `default/web`: `spec.externalIPs[2]`: `10.0.0.y` is not an IPv4 address",
            "block-items.yaml:15: error: Service `default/web`: `spec.externalIPs[3]`: `10.0.0.z` is not an IPv4 address",
        ],
    );
    let text = "apiVersion: v1\rkind: Service\rmetadata:\r  name: web\rspec:\r  ports:\r  - port: 80\r    protocol: SCTP\r";
    assert_report(
        "cr.yaml",
        text,
        &["cr.yaml:8: error: Service `default/web`: `spec.ports[0].protocol`: protocol SCTP is not supported (TCP or UDP)"],
    );
}
