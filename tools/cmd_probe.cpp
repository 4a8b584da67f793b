// `flatmin probe`: loss, gradient, and optionally H v and ∇³f[v, u] of a ResNet-18's mean
// cross-entropy on one batch, written to a safetensors file (loss, grad/<name>, hvp/<name>,
// third/<name>) with a one-line JSON summary on stdout. One chain of grad() calls:
// g = ∇f (differentiable), H v = ∇⟨g, v⟩, ∇³f[v, u] = ∇⟨H v, u⟩.
#include <cstdio>

#include "tools/command.hpp"
#include "tools/model_flags.hpp"

namespace flatmin::tools {
namespace {

// grad() with unreachable parameters as zeros (a parameter can drop out of a derivative).
Params grads(const Tensor& y, const Params& x, bool create_graph) {
  Params g = grad({y}, x, {.create_graph = create_graph, .allow_unused = true});
  for (size_t i = 0; i < g.size(); ++i)
    if (!g[i].defined()) g[i] = zeros_like(x[i]);
  return g;
}

int run(int argc, char** argv) {
  CLI::App app{"Loss, gradient, Hessian-vector product and third-order contraction of a model on a batch"};
  ModelFlags flags;
  flags.add_to(app);
  std::string v_path, u_path, out_path;
  app.add_option("--v", v_path, "direction v (.safetensors, one tensor per parameter): adds hvp/<name> = H v");
  app.add_option("--u", u_path, "direction u (needs --v): adds third/<name> = ∇³f[v, u]");
  app.add_option("--out", out_path, "output .safetensors")->required();
  CLI11_PARSE(app, argc, argv);
  nn::check_output_path("--out", out_path);
  if (!u_path.empty() && v_path.empty()) throw Error("--u needs --v");

  Problem p = load_problem(flags);
  Params v = v_path.empty() ? Params{} : load_direction(v_path, p);
  Params u = u_path.empty() ? Params{} : load_direction(u_path, p);

  Params x = leaves(p.x);
  Tensor loss = p.loss(x);
  Params g = grads(loss, x, !v.empty());
  nn::NamedTensors out = {{"loss", loss.detach()}};
  for (size_t i = 0; i < g.size(); ++i) out.emplace_back("grad/" + p.names[i], g[i].detach());
  std::string json =
      "{\"loss\": " + json_number(loss.item()) + ", \"grad_norm\": " + json_number(norm(detach(g)).item());
  if (!v.empty()) {
    Params hv = grads(dot(g, v), x, !u.empty());
    for (size_t i = 0; i < hv.size(); ++i) out.emplace_back("hvp/" + p.names[i], hv[i].detach());
    json += ", \"vHv\": " + json_number(dot(detach(hv), v).item());
    if (!u.empty()) {
      Params t = grads(dot(hv, u), x, false);
      for (size_t i = 0; i < t.size(); ++i) out.emplace_back("third/" + p.names[i], t[i].detach());
      json += ", \"third_norm\": " + json_number(norm(t).item());
    }
  }
  nn::save_safetensors(out_path, out, {{"command", "flatmin probe"}, {"mode", flags.mode}});
  std::printf("%s}\n", json.c_str());
  return 0;
}

Register reg{{"probe", "loss, gradient, H v and ∇³f[v,u] of a ResNet-18 on a batch (safetensors in and out)", run}};
}  // namespace
}  // namespace flatmin::tools
