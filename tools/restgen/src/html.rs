//! Renders the OpenAPI document as one self-contained HTML page (no scripts, no CDN), served
//! at `/api/docs` so the reference works offline and always matches the running build.

use std::fmt::Write as _;

use serde_json::Value;

/// The page for `doc` (an OpenAPI document from [`crate::openapi::generate`]).
pub fn generate(doc: &Value) -> String {
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\n\
         body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}\n\
         code,pre{{font-family:ui-monospace,monospace;background:#f4f4f4;padding:0 .2em}}\n\
         table{{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}}td,th{{border:1px solid #ddd;padding:.3rem;text-align:left;vertical-align:top}}\n\
         .m{{font-weight:bold;padding:.1em .4em;border-radius:3px;color:#fff}}.GET{{background:#2a7}}.POST{{background:#27c}}\n\
         .PUT,.PATCH{{background:#c82}}.DELETE{{background:#c33}}section{{border-top:1px solid #ccc;margin-top:1.5rem}}\n\
         </style></head><body>\n<h1>{t}</h1>\n<p>{d}</p>\n<p>Machine-readable: <a href=\"/api/openapi.json\">/api/openapi.json</a>. \
         Errors use the Google JSON shape (<a href=\"#Status\">Status</a>).</p>\n",
        t = esc(title),
        d = esc(doc["info"]["description"].as_str().unwrap_or("")),
    );
    let empty = serde_json::Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    out.push_str("<h2>Routes</h2>\n<ul>\n");
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap_or(&empty) {
            let m = method.to_uppercase();
            let _ = writeln!(
                out,
                "<li><a href=\"#{id}\"><span class=\"m {m}\">{m}</span> <code>{p}</code></a> {s}</li>",
                id = esc(op["operationId"].as_str().unwrap_or("")),
                p = esc(path),
                s = esc(op["summary"].as_str().unwrap_or("")),
            );
        }
    }
    out.push_str("</ul>\n");
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap_or(&empty) {
            operation(&mut out, path, &method.to_uppercase(), op);
        }
    }
    out.push_str("<h2>Schemas</h2>\n");
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap_or(&empty) {
        let _ = writeln!(out, "<section id=\"{n}\"><h3>{n}</h3>", n = esc(name));
        let _ = writeln!(out, "<p>{}</p>", esc(schema["description"].as_str().unwrap_or("")));
        if let Some(values) = schema["enum"].as_array() {
            let names: Vec<String> = values
                .iter()
                .map(|v| format!("<code>{}</code>", esc(v.as_str().unwrap_or(""))))
                .collect();
            let _ = writeln!(out, "<p>One of: {}</p>", names.join(", "));
        }
        if let Some(props) = schema["properties"].as_object() {
            out.push_str("<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>\n");
            for (field, s) in props {
                let _ = writeln!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                    esc(field),
                    type_of(s),
                    esc(s["description"].as_str().unwrap_or(""))
                );
            }
            out.push_str("</table>\n");
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body></html>\n");
    out
}

fn operation(out: &mut String, path: &str, m: &str, op: &Value) {
    let _ = writeln!(
        out,
        "<section id=\"{id}\"><h3><span class=\"m {m}\">{m}</span> <code>{p}</code></h3>\n<p><small>{id}</small></p>\n<pre>{d}</pre>",
        id = esc(op["operationId"].as_str().unwrap_or("")),
        p = esc(path),
        d = esc(op["description"].as_str().unwrap_or("")),
    );
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("<table><tr><th>Parameter</th><th>In</th><th>Type</th><th>Description</th></tr>\n");
        for p in params {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(p["name"].as_str().unwrap_or("")),
                esc(p["in"].as_str().unwrap_or("")),
                type_of(&p["schema"]),
                esc(p["description"].as_str().unwrap_or(""))
            );
        }
        out.push_str("</table>\n");
    }
    if let Some(schema) = op["requestBody"]["content"]["application/json"]["schema"].as_object() {
        let _ = writeln!(out, "<p>Body (JSON): {}</p>", type_of(&Value::Object(schema.clone())));
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            out.push_str("<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>\n");
            for (field, s) in props {
                let _ = writeln!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                    esc(field),
                    type_of(s),
                    esc(s["description"].as_str().unwrap_or(""))
                );
            }
            out.push_str("</table>\n");
        }
    }
    let empty = serde_json::Map::new();
    out.push_str("<table><tr><th>Status</th><th>Meaning</th><th>Body</th></tr>\n");
    for (code, r) in op["responses"].as_object().unwrap_or(&empty) {
        let (desc, body) = if r.get("$ref").is_some() {
            (
                "Any other error.".to_string(),
                "<a href=\"#Status\">Status</a>".to_string(),
            )
        } else {
            let content = r["content"].as_object();
            let body = content
                .and_then(|c| c.iter().next())
                .map(|(ct, c)| format!("{} <code>{}</code>", type_of(&c["schema"]), esc(ct)))
                .unwrap_or_default();
            (r["description"].as_str().unwrap_or("").to_string(), body)
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{body}</td></tr>",
            esc(code),
            esc(&desc)
        );
    }
    out.push_str("</table></section>\n");
}

/// A short human type: a link for references, `array of X`, `map of X`.
fn type_of(s: &Value) -> String {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#{n}\">{n}</a>", n = esc(name));
    }
    if let Some(all) = s["allOf"].as_array().and_then(|a| a.first()) {
        return type_of(all);
    }
    match s["type"].as_str() {
        Some("array") => format!("array of {}", type_of(&s["items"])),
        Some("object") if s.get("additionalProperties").is_some() => {
            format!("map of {}", type_of(&s["additionalProperties"]))
        }
        Some(t) => match s["format"].as_str() {
            Some(f) => format!("{} ({})", esc(t), esc(f)),
            None => esc(t),
        },
        None => "any JSON".to_string(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
