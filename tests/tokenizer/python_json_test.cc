// Python json.dumps(ensure_ascii=False) compatibility of the JSON embedded in prompts.
#include "tokenizer/python_json.h"

#include "tokenizer/chat_message.h"
#include "gtest/gtest.h"

namespace flotilla {
namespace {

std::string Float(double d) {
  std::string s;
  AppendPythonFloat(d, &s);
  return s;
}

TEST(PythonJsonTest, FloatReprMatchesPython) {
  // Expected strings are Python's repr() of the same doubles.
  EXPECT_EQ(Float(1.0), "1.0");
  EXPECT_EQ(Float(1e5), "100000.0");
  EXPECT_EQ(Float(1e-7), "1e-07");
  EXPECT_EQ(Float(1e15), "1000000000000000.0");
  EXPECT_EQ(Float(1e16), "1e+16");
  EXPECT_EQ(Float(1.5e16), "1.5e+16");
  EXPECT_EQ(Float(0.0001), "0.0001");
  EXPECT_EQ(Float(0.00001), "1e-05");
  EXPECT_EQ(Float(0.1), "0.1");
  EXPECT_EQ(Float(-0.5), "-0.5");
  EXPECT_EQ(Float(-0.0), "-0.0");
  EXPECT_EQ(Float(0.0), "0.0");
  EXPECT_EQ(Float(123.456), "123.456");
  EXPECT_EQ(Float(1.0 / 3.0), "0.3333333333333333");
  EXPECT_EQ(Float(5e-324), "5e-324");
  EXPECT_EQ(Float(1.7976931348623157e308), "1.7976931348623157e+308");
  EXPECT_EQ(Float(123456789012345678.0), "1.2345678901234568e+17");
}

TEST(PythonJsonTest, DumpsLikePython) {
  auto v = ParseJsonKeepingNumbers(
      R"({"b": [true, null, -0.5, 1e5], "a": {"x": "é\"\\\n\u0001"}, "big": 123456789012345678901234567890, "u": 18446744073709551615, "i": -0})");
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(PythonJson(*v),
            "{\"b\": [true, null, -0.5, 100000.0], \"a\": {\"x\": \"é\\\"\\\\\\n\\u0001\"}, "
            "\"big\": 123456789012345678901234567890, \"u\": 18446744073709551615, \"i\": 0}");
  EXPECT_EQ(PythonJson(nlohmann::ordered_json::object()), "{}");
  EXPECT_EQ(PythonJson(nlohmann::ordered_json::array()), "[]");
}

TEST(PythonJsonTest, RepeatedKeysKeepFirstPositionAndLastValue) {
  auto v = ParseJsonKeepingNumbers(R"({"a": 1, "b": 2, "a": {"c": 3, "c": 4}})");
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(PythonJson(*v), "{\"a\": {\"c\": 4}, \"b\": 2}");
}

TEST(PythonJsonTest, InvalidJsonIsRefused) {
  EXPECT_FALSE(ParseJsonKeepingNumbers("{").has_value());
  EXPECT_FALSE(ParseJsonKeepingNumbers("").has_value());
  EXPECT_FALSE(ParseJsonKeepingNumbers("[1] x").has_value());
}

TEST(PythonJsonTest, ToolArgumentsBecomeDsmlParameters) {
  auto p = ToolArgumentsToDsml(R"({"s": "raw\ntext", "n": 1e-7, "o": {"k": "é"}})");
  ASSERT_TRUE(p.ok());
  ASSERT_EQ(p->size(), 3u);
  EXPECT_TRUE((*p)[0].is_string);
  EXPECT_EQ((*p)[0].value, "raw\ntext");
  EXPECT_FALSE((*p)[1].is_string);
  EXPECT_EQ((*p)[1].value, "1e-07");
  EXPECT_EQ((*p)[2].value, "{\"k\": \"é\"}");
  auto fallback = ToolArgumentsToDsml("not json");
  ASSERT_TRUE(fallback.ok());
  ASSERT_EQ(fallback->size(), 1u);
  EXPECT_EQ((*fallback)[0].name, "arguments");
  EXPECT_EQ((*fallback)[0].value, "not json");
  EXPECT_FALSE(ToolArgumentsToDsml("\"a string\"").ok());
}

}  // namespace
}  // namespace flotilla
