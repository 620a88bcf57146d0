#include "comm/listen_address.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace flotilla {
namespace {

// Network-order bytes of an address literal, or empty when `text` is not one of `family`.
std::vector<uint8_t> Parse(int family, const std::string& text) {
  std::array<uint8_t, 16> buf{};
  if (inet_pton(family, text.c_str(), buf.data()) != 1) return {};
  return std::vector<uint8_t>(buf.begin(), buf.begin() + (family == AF_INET ? 4 : 16));
}

bool SamePrefix(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, int bits) {
  for (int i = 0; i < bits; ++i) {
    const int byte = i / 8, shift = 7 - i % 8;
    if (((a[byte] >> shift) & 1) != ((b[byte] >> shift) & 1)) return false;
  }
  return true;
}

std::string Describe(const std::vector<InterfaceAddress>& interfaces) {
  std::vector<std::string> parts;
  for (const auto& i : interfaces) parts.push_back(absl::StrCat(i.interface, " ", i.address));
  return parts.empty() ? "no interface that is up" : absl::StrJoin(parts, ", ");
}

}  // namespace

absl::StatusOr<std::vector<InterfaceAddress>> LocalInterfaceAddresses() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) {
    return absl::InternalError(absl::StrCat("getifaddrs: ", std::strerror(errno)));
  }
  std::unique_ptr<ifaddrs, void (*)(ifaddrs*)> owned(list, freeifaddrs);
  std::vector<InterfaceAddress> out;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || !(i->ifa_flags & IFF_UP)) continue;
    const int family = i->ifa_addr->sa_family;
    if (family != AF_INET && family != AF_INET6) continue;
    char text[INET6_ADDRSTRLEN] = {};
    const void* raw = family == AF_INET
                          ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr)
                          : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(i->ifa_addr)->sin6_addr);
    if (inet_ntop(family, raw, text, sizeof(text)) == nullptr) continue;
    out.push_back({i->ifa_name, text, family});
  }
  return out;
}

absl::StatusOr<std::string> ResolveListenAddress(const std::string& spec,
                                                 const std::vector<InterfaceAddress>& interfaces) {
  if (spec.empty()) return absl::InvalidArgumentError("empty listen address");
  if (!Parse(AF_INET, spec).empty() || !Parse(AF_INET6, spec).empty()) return spec;

  const size_t slash = spec.find('/');
  if (slash != std::string::npos) {
    const std::string net = spec.substr(0, slash);
    const int family = Parse(AF_INET, net).empty() ? AF_INET6 : AF_INET;
    const std::vector<uint8_t> prefix = Parse(family, net);
    int bits = -1;
    const int max_bits = family == AF_INET ? 32 : 128;
    if (prefix.empty() || !absl::SimpleAtoi(spec.substr(slash + 1), &bits) || bits < 0 ||
        bits > max_bits) {
      return absl::InvalidArgumentError(absl::StrCat(
          "listen address '", spec, "': expected an address, an interface name or a subnet "
          "such as 10.0.0.0/16"));
    }
    for (const auto& i : interfaces) {
      if (i.family != family) continue;
      if (SamePrefix(Parse(family, i.address), prefix, bits)) return i.address;
    }
    return absl::NotFoundError(absl::StrCat("no local address in subnet ", spec, " (this host has ",
                                            Describe(interfaces), ")"));
  }

  const InterfaceAddress* v6 = nullptr;
  for (const auto& i : interfaces) {
    if (i.interface != spec) continue;
    if (i.family == AF_INET) return i.address;
    if (v6 == nullptr) v6 = &i;
  }
  if (v6 != nullptr) return v6->address;
  return absl::NotFoundError(absl::StrCat("listen address '", spec,
                                          "' is neither an address nor an interface that is up "
                                          "(this host has ", Describe(interfaces), ")"));
}

absl::StatusOr<std::string> ResolveListenAddress(const std::string& spec) {
  ASSIGN_OR_RETURN(std::vector<InterfaceAddress> interfaces, LocalInterfaceAddresses());
  return ResolveListenAddress(spec, interfaces);
}

}  // namespace flotilla
