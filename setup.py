"Packaging for attention_transfer: every field comes from settings.ini (nbdev's single source)."
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
c = cfg['DEFAULT']

licenses = {'apache2': 'Apache-2.0'}  # SPDX expression (setuptools deprecates license classifiers)
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()
lic = licenses[c['license']]
min_python = c['min_python']

requirements = c.get('requirements', '').split()
dev_requirements = c.get('dev_requirements', '').split()
extras = {k[len('extra_'):]: v.split() for k, v in c.items() if k.startswith('extra_')}  # extra_<name> lines
console_scripts = c.get('console_scripts', '').split()

setuptools.setup(
    name=c['lib_name'],
    version=c['version'],
    description=c['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=c['author'], author_email=c['author_email'],
    license=lic,
    url=c['git_url'],
    project_urls={'Documentation': c['doc_host'] + c['doc_baseurl'], 'Source': c['git_url'],
                  'Issues': c['git_url'] + '/issues', 'Paper': 'https://arxiv.org/abs/2411.09702'},
    keywords=c['keywords'].split(),
    classifiers=['Development Status :: ' + statuses[int(c['status']) - 1],  # settings.ini status 3 -> '3 - Alpha'
                 'Intended Audience :: ' + c['audience'].title(),
                 'Natural Language :: ' + c['language'].title(),
                 'Topic :: Scientific/Engineering :: Artificial Intelligence']
                + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=[c['lib_name'], c['lib_name'] + '.*']),
    include_package_data=True,
    python_requires='>=' + min_python,
    install_requires=requirements,
    extras_require={**extras, 'dev': dev_requirements + [r for rs in extras.values() for r in rs]},  # dev: all
    entry_points={'console_scripts': console_scripts, 'nbdev': [f'{c["lib_path"]}={c["lib_path"]}._modidx:d']},
    zip_safe=False,
)
