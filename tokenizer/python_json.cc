#include "tokenizer/python_json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <vector>

namespace flotilla {
namespace {

using ojson = nlohmann::ordered_json;

// Builds an ordered_json tree from SAX events (nlohmann's own DOM builder is internal API).
class KeepNumbersBuilder : public nlohmann::json_sax<ojson> {
 public:
  explicit KeepNumbersBuilder(ojson* root) : root_(root) {}

  bool null() override { return Put(ojson(nullptr)); }
  bool boolean(bool v) override { return Put(ojson(v)); }
  bool number_integer(number_integer_t v) override { return Put(ojson(v)); }
  bool number_unsigned(number_unsigned_t v) override { return Put(ojson(v)); }
  bool number_float(number_float_t v, const string_t& raw) override {
    if (raw.find_first_of(".eE") == string_t::npos) {  // an integer too large for 64 bits
      return Put(ojson::binary(ojson::binary_t::container_type(raw.begin(), raw.end())));
    }
    return Put(ojson(v));
  }
  bool string(string_t& v) override { return Put(ojson(std::move(v))); }
  bool binary(binary_t& v) override { return Put(ojson::binary(std::move(v))); }
  bool start_object(std::size_t) override { return Open(ojson::object()); }
  bool key(string_t& k) override {
    pending_key_ = std::move(k);
    return true;
  }
  bool end_object() override { return Close(); }
  bool start_array(std::size_t) override { return Open(ojson::array()); }
  bool end_array() override { return Close(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }

 private:
  ojson* Slot() {
    if (stack_.empty()) return root_;
    ojson* parent = stack_.back();
    if (parent->is_array()) {
      parent->push_back(ojson());
      return &parent->back();
    }
    return &(*parent)[pending_key_];  // a repeated key keeps its slot, takes the new value
  }
  bool Put(ojson v) {
    *Slot() = std::move(v);
    return true;
  }
  bool Open(ojson container) {
    ojson* slot = Slot();
    *slot = std::move(container);
    stack_.push_back(slot);
    return true;
  }
  bool Close() {
    stack_.pop_back();
    return true;
  }

  ojson* root_;
  std::vector<ojson*> stack_;
  std::string pending_key_;
};

}  // namespace

std::optional<nlohmann::ordered_json> ParseJsonKeepingNumbers(std::string_view text) {
  ojson root;
  KeepNumbersBuilder builder(&root);
  if (!ojson::sax_parse(text, &builder, nlohmann::json::input_format_t::json, /*strict=*/true)) {
    return std::nullopt;
  }
  return root;
}

void AppendPythonJsonString(std::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      default:
        if (u < 0x20) {
          out->append("\\u00");
          out->push_back(kHex[u >> 4]);
          out->push_back(kHex[u & 15]);
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

void AppendPythonFloat(double d, std::string* out) {
  if (std::isnan(d)) {
    out->append("NaN");
    return;
  }
  if (std::isinf(d)) {
    out->append(d > 0 ? "Infinity" : "-Infinity");
    return;
  }
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  const std::string_view sci(buf, res.ptr - buf);  // e.g. "-1.2345e+02"
  const size_t e_pos = sci.find('e');
  std::string_view mantissa = sci.substr(0, e_pos);
  int exponent = 0;
  std::from_chars(sci.data() + e_pos + 1 + (sci[e_pos + 1] == '+'), sci.data() + sci.size(),
                  exponent);
  if (!mantissa.empty() && mantissa[0] == '-') {
    out->push_back('-');
    mantissa.remove_prefix(1);
  }
  std::string digits;
  for (const char c : mantissa) {
    if (c != '.') digits.push_back(c);
  }
  const int num_digits = static_cast<int>(digits.size());
  const int decpt = exponent + 1;  // value = 0.DIGITS * 10^decpt
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out->append("0.").append(-decpt, '0').append(digits);
    } else if (decpt >= num_digits) {
      out->append(digits).append(decpt - num_digits, '0').append(".0");
    } else {
      out->append(digits, 0, decpt).append(".").append(digits, decpt);
    }
    return;
  }
  out->push_back(digits[0]);
  if (num_digits > 1) out->append(".").append(digits, 1);
  char exp_buf[16];
  std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+',
                exponent < 0 ? -exponent : exponent);
  out->append(exp_buf);
}

void AppendPythonJson(const nlohmann::ordered_json& value, std::string* out) {
  switch (value.type()) {
    case ojson::value_t::null:
      out->append("null");
      break;
    case ojson::value_t::boolean:
      out->append(value.get<bool>() ? "true" : "false");
      break;
    case ojson::value_t::number_integer:
      out->append(std::to_string(value.get<int64_t>()));
      break;
    case ojson::value_t::number_unsigned:
      out->append(std::to_string(value.get<uint64_t>()));
      break;
    case ojson::value_t::number_float:
      AppendPythonFloat(value.get<double>(), out);
      break;
    case ojson::value_t::string:
      AppendPythonJsonString(value.get_ref<const std::string&>(), out);
      break;
    case ojson::value_t::binary: {  // digits of an integer beyond 64 bits
      const auto& digits = value.get_binary();
      out->append(digits.begin(), digits.end());
      break;
    }
    case ojson::value_t::array: {
      out->push_back('[');
      bool first = true;
      for (const auto& item : value) {
        if (!first) out->append(", ");
        first = false;
        AppendPythonJson(item, out);
      }
      out->push_back(']');
      break;
    }
    case ojson::value_t::object: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        if (!first) out->append(", ");
        first = false;
        AppendPythonJsonString(key, out);
        out->append(": ");
        AppendPythonJson(item, out);
      }
      out->push_back('}');
      break;
    }
    case ojson::value_t::discarded:
      out->append("null");
      break;
  }
}

bool PythonTruthy(const nlohmann::ordered_json& value) {
  switch (value.type()) {
    case ojson::value_t::null:
      return false;
    case ojson::value_t::boolean:
      return value.get<bool>();
    case ojson::value_t::number_integer:
      return value.get<int64_t>() != 0;
    case ojson::value_t::number_unsigned:
      return value.get<uint64_t>() != 0;
    case ojson::value_t::number_float:
      return value.get<double>() != 0.0;
    case ojson::value_t::string:
      return !value.get_ref<const std::string&>().empty();
    case ojson::value_t::binary:
      return true;
    case ojson::value_t::array:
    case ojson::value_t::object:
      return !value.empty();
    case ojson::value_t::discarded:
      return false;
  }
  return false;
}

}  // namespace flotilla
